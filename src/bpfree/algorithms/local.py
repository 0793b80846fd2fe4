"""Supervised local losses: pred, sim and predsim (Nøkland and Eidnes 2019, "Training Neural
Networks with Local Error Signals", ICML, arXiv 1901.06656; code: github.com/anokland/local-loss).

Every hidden layer (MLP) or conv block (CNN) learns from a loss computed at its own output h
(B, d) or (B, c, H, W), through small heads of its own; its input is detached, so no gradient
crosses a layer boundary. All layers and heads train in the same pass:

- pred:    cross-entropy of a linear classifier head on h (zero-initialised weights; conv outputs
           average-pooled first, only until the flattened size is at most `pred_dim`).
- sim:     || S(head(h)) - S(Y) ||^2 averaged over the B x B entries, with head a bias-free
           Linear(d, d) (MLP) or bias-free 3x3 conv (CNN); S is the adjusted cosine similarity
           (`similarity`): rows mean-centred, unit-normalised, products clamped to [-1, 1]; conv
           maps with more than 3 channels and more than one row are first reduced to each
           channel's spatial standard deviation; Y is the one-hot labels.
- predsim: (1 - beta) pred + beta sim (beta 0.99 as the code's default).

Prediction: a zero-initialised output layer Linear(d_L, C) trained by cross-entropy on the last
hidden layer's detached output (scaled by (1 - beta) under predsim, as the code does).

Where this departs from the paper, and why:
- The sim loss is the mean over the B x B entries (the code's `F.mse_loss`), where the paper writes
  the squared Frobenius norm (the sum). The published numbers and beta = 0.99 come from the code,
  and only with the mean does beta weigh the two losses as there.
- The network is the architecture entry's, the same as bp trains. A plain MLP is Linear -> ReLU,
  Kaiming-uniform weights with zero biases; CNN blocks conv -> ReLU -> maxpool -> BatchNorm, the
  local losses taken at the block's output. The paper's blocks are Linear/Conv -> BatchNorm ->
  nonlinearity -> dropout, LeakyReLU (slope 0.01) for sim and predsim. For the MLP an entry's
  options build that block (`activation: leaky_relu`, `batchnorm: true`, `dropout`, see
  bpfree.models.MLP_OPTIONS; the code's MNIST MLP: 3 x 1024, dropout 0.1): as in the code
  (LocalLossBlockLinear.forward), the heads and the local losses see the layer's output before
  dropout, the next layer and the output layer see it after. Still not the code's: its Linear
  layers keep torch's default initialisation (ours Kaiming-uniform, zero biases). `nonlin:
  leakyrelu` puts LeakyReLU in place of ReLU in local's network only (CNN blocks too), leaving
  bp's on ReLU; the architecture's `activation` gives both the same. No augmentation (the code
  jitters MNIST by 2 pixels) and no learning-rate schedule (the protocol's).
- One Adam (L2 penalty `l2`, the code's `--weight-decay`) or AdamW (`weight_decay`) over all layers
  and heads. The code gives every block its own Adam and steps it right after the block's loss,
  before the next block runs; since each block's input is detached and Adam's update is per
  parameter, that equals one Adam stepped once after the summed loss, at equal learning rates.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bpfree import hparams, models
from bpfree.hparams import SettingError, hp
from bpfree.algorithms.base import Algorithm, Cost, Stage, accuracy, adam, chunked, minibatch_epoch, train_batch
from bpfree.data import Data

LOSSES = ("pred", "sim", "predsim")
BETA = 0.99  # the code's default weight of the sim loss in predsim
LEAKY_SLOPE = 0.01


def similarity(x: torch.Tensor) -> torch.Tensor:
    """Adjusted cosine similarity S(x) (B, B) of a batch x (B, d) or (B, c, H, W) (paper, eq. for
    L_sim): rows mean-centred, divided by (1e-8 + their L2 norm), products clamped to [-1, 1].
    A 4-d x with c > 3 channels and H > 1 is first reduced to (B, c), each channel's spatial
    standard deviation; any other x is flattened."""
    if x.dim() == 4 and x.shape[1] > 3 and x.shape[2] > 1:
        x = x.flatten(2).std(dim=2)
    x = x.flatten(1)
    xc = x - x.mean(dim=1, keepdim=True)
    xn = xc / (1e-8 + xc.norm(dim=1, keepdim=True))
    return (xn @ xn.T).clamp(-1, 1)


def sim_loss(h_head: torch.Tensor, s_y: torch.Tensor) -> torch.Tensor:
    """Mean over the B x B entries of (S(h_head) - S(Y))^2; s_y = S(Y) of the one-hot labels."""
    return F.mse_loss(similarity(h_head), s_y)


def pred_pool(c: int, h: int, w: int, bound: int) -> tuple[nn.Module | None, int]:
    """The code's average pooling in front of a conv layer's pred head: kernel heights and widths
    doubled in turn (height first) until c * ceil(h / kh) * ceil(w / kw) <= bound or kh reaches h;
    padding keeps ceil-sized outputs. Returns (pool or None, flattened size after it)."""
    kh = kw = 1
    oh, ow = h, w
    while c * oh * ow > bound and kh < h:
        kh *= 2
        oh = math.ceil(h / kh)
        if c * oh * ow > bound:
            kw *= 2
            ow = math.ceil(w / kw)
    if kh == kw == 1:
        return None, c * h * w
    pool = nn.AvgPool2d((kh, kw), padding=((kh * (oh - h // kh)) // 2, (kw * (ow - w // kw)) // 2))
    oh, ow = ((n + 2 * p - k) // k + 1 for n, k, p in zip((h, w), (kh, kw), pool.padding))
    return pool, c * oh * ow


class LocalNet(nn.Module):
    """The MLP's hidden layers or the CNN's blocks (as bp builds them), per layer a pred head
    (loss pred, predsim) and a sim head (loss sim, predsim), and the output layer."""

    def __init__(self, arch: dict, shape: tuple[int, ...], n_classes: int, loss: str, nonlin: str, pred_dim: int):
        super().__init__()
        act = (lambda: nn.LeakyReLU(LEAKY_SLOPE)) if nonlin == "leakyrelu" else nn.ReLU
        self.conv = arch["type"] == "cnn"
        self.drop: nn.Module = nn.Identity()  # between layers, after the local losses' input (MLP option)
        if self.conv:
            channels = list(arch["channels"])
            self.layers = nn.ModuleList(models.conv_block(a, b) for a, b in zip([shape[0], *channels[:-1]], channels))
            for block in self.layers:  # conv -> act -> maxpool -> BatchNorm
                block[1] = act()
            outs = models.cnn_shapes(channels, shape)[1:]
            pools = [pred_pool(*s, pred_dim) for s in outs]
            sim_sizes, sim_head = [c for c, _, _ in outs], lambda c: nn.Conv2d(c, c, 3, padding=1, bias=False)
            d_last = math.prod(outs[-1])
        else:
            widths, opts = models.mlp_widths(arch, shape), models.mlp_options(arch)
            if nonlin == "relu":  # the architecture's activation
                act = functools.partial(models.activation, opts["activation"])
            norm = (lambda d: [nn.BatchNorm1d(d)]) if opts["batchnorm"] else (lambda d: [])
            self.layers = nn.ModuleList(nn.Sequential(models.hidden_linear(a, b), *norm(b), act())
                                        for a, b in zip(widths[:-1], widths[1:]))
            if opts["dropout"] > 0:
                self.drop = nn.Dropout(opts["dropout"])
            pools = [(None, d) for d in widths[1:]]
            sim_sizes, sim_head = widths[1:], lambda d: nn.Linear(d, d, bias=False)
            d_last = widths[-1]
        if loss != "pred":
            self.sim_heads = nn.ModuleList(sim_head(n) for n in sim_sizes)
        if loss != "sim":
            self.pools = nn.ModuleList(p or nn.Identity() for p, _ in pools)
            self.pred_heads = nn.ModuleList(nn.Linear(d, n_classes) for _, d in pools)
            for head in self.pred_heads:  # zero weights, the default bias (as the code)
                nn.init.zeros_(head.weight)
        self.out = nn.Linear(d_last, n_classes)
        nn.init.zeros_(self.out.weight)

    def pred(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Class scores (B, C) of layer i's pred head."""
        return self.pred_heads[i](self.pools[i](h).flatten(1))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, c, H, W) as the first layer takes them (flattened for the MLP)."""
        return x if self.conv else x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inputs(x)
        for layer in self.layers:
            h = self.drop(layer(h))
        return self.out(h.flatten(1))


@dataclass(frozen=True, kw_only=True)
class Settings(hparams.Settings):
    loss: str = hp("predsim", choices=LOSSES, doc="local loss of every layer: pred (cross-entropy of a linear "
                                                 "head), sim (similarity matching) or predsim (both, weighted by beta)")
    beta: float = hp(BETA, low=0.0, high=1.0, high_open=True,
                     doc="predsim = (1 - beta) pred + beta sim; the output layer's loss is scaled by (1 - beta) "
                         "(loss predsim only)")
    lr: float = hparams.lr("learning rate of the one optimiser over all layers and heads")
    batch_size: int = hparams.batch_size()
    optimizer: str = hp("adam", choices=("adam", "adamw"), doc="Adam with an L2 penalty (the code's) or AdamW")
    l2: float = hparams.l2("L2 penalty of every parameter (optimizer adam; the code's --weight-decay)")
    weight_decay: float = hparams.weight_decay("decoupled weight decay of every parameter (optimizer adamw)")
    nonlin: str = hp("relu", choices=("relu", "leakyrelu"),
                     doc="relu: the architecture's activation (bp's network; ReLU unless an mlp entry sets "
                         "activation); leakyrelu: LeakyReLU, slope 0.01 (the paper's for sim and predsim), in "
                         "local's network only")
    pred_dim: int = hp(4096, low=1, unit="features", doc="conv outputs are average-pooled until their flattened size "
                                                         "is at most this before the pred head (CNN only)")

    def check(self) -> None:
        if self.loss != "predsim" and self.beta != BETA:
            raise SettingError("beta", f"loss {self.loss} has no beta (only predsim weighs two losses)")
        hparams.check_decay(self, self.optimizer, self.optimizer == "adamw")

    def optimizer_label(self) -> str:
        return "Adam (L2 penalty)" if self.optimizer == "adam" else "AdamW (decoupled weight decay)"


class LocalLoss(Algorithm):
    Settings = Settings
    LOCALITY = "layer-local"
    ARCH_OPTIONS = tuple(models.MLP_OPTIONS)  # the paper's MLP block (see LocalNet)

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        h = self.hp
        self.loss = h.loss
        self.net = LocalNet(arch, self.shape, self.n_classes, h.loss, h.nonlin, h.pred_dim).to(self.device)
        self.L = len(self.net.layers)
        decay = {"l2": h.l2} if h.optimizer == "adam" else {"weight_decay": h.weight_decay}
        self.opt = adam(self.net.parameters(), h.lr, **decay)

    def local_losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each layer's local loss on its detached input, and the output layer's loss (scaled by
        1 - beta under predsim), for a batch x with labels y. Their sum's gradient gives every
        layer (and head) exactly the gradient of its own loss."""
        beta = self.hp.beta
        a = self.net.inputs(x)  # what the next layer takes
        s_y = similarity(F.one_hot(y, self.n_classes).to(x.dtype)) if self.loss != "pred" else None
        losses = []
        for i, layer in enumerate(self.net.layers):
            h = layer(a.detach())
            a = self.net.drop(h)  # the local losses see h, the layers above its dropout (as the code)
            if self.loss == "pred":
                losses.append(F.cross_entropy(self.net.pred(i, h), y))
                continue
            sim = sim_loss(self.net.sim_heads[i](h), s_y)
            if self.loss == "sim":
                losses.append(sim)
            else:
                losses.append((1 - beta) * F.cross_entropy(self.net.pred(i, h), y) + beta * sim)
        out = F.cross_entropy(self.net.out(a.detach().flatten(1)), y)
        return losses, (1 - beta) * out if self.loss == "predsim" else out

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        self.net.train()

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            losses, out = self.local_losses(train_batch(data, idx, gen), data.y_train[idx])
            return sum(losses, out)

        return minibatch_epoch(self.opt, loss_fn, len(data.y_train), self.hp.batch_size, gen, self.device)

    @torch.no_grad()
    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        """Every pred head's scores and the output layer's, (N, L + 1, C)."""
        outs, h = [], self.net.inputs(x)
        for i, layer in enumerate(self.net.layers):
            h = layer(h)
            outs.append(self.net.pred(i, h))
        return torch.stack([*outs, self.net.out(h.flatten(1))], 1)

    def layer_accuracies(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.loss == "sim":  # no pred heads
            return {}
        self.net.eval()
        scores = chunked(self._scores, x)
        kind = "block" if self.net.conv else "layer"
        return {f"{kind}{i + 1}": accuracy(scores[:, i], y) for i in range(self.L)}

    # ---- cost -----------------------------------------------------------------------------------

    def cost(self, stage: Stage) -> Cost:
        """Per sample: each layer's forward and weight gradient (its input is detached: no input
        gradient); each head's forward, weight gradient and input gradient; the similarity
        matrices (B x B x dim per batch, forward and backward); the output layer's forward and
        weight gradient."""
        C, B = self.n_classes, self.hp.batch_size
        if self.net.conv:
            shapes = models.cnn_shapes(list(self.arch["channels"]), self.shape)[1:]
            layer = models.cnn_block_macs(list(self.arch["channels"]), self.shape)
            sim_head = [9 * c * c * h * w for c, h, w in shapes]
            sim_dim = [c if c > 3 and h > 1 else c * h * w for c, h, w in shapes]
            pred_in = [head.in_features for head in self.net.pred_heads] if self.loss != "sim" else []
        else:
            w = models.mlp_widths(self.arch, self.shape)
            layer = [a * b for a, b in zip(w[:-1], w[1:])]
            sim_head = [d * d for d in w[1:]]
            sim_dim = w[1:]
            pred_in = w[1:]
        train = 2 * sum(layer) + 2 * self.net.out.in_features * C
        if self.loss != "sim":
            train += 3 * sum(d * C for d in pred_in)
        if self.loss != "pred":
            train += 3 * sum(sim_head) + sum(2 * B * d + B * C for d in sim_dim)
        return Cost(train=train, eval=self.predict_macs())

ALGORITHM = LocalLoss
