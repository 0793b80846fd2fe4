"""FF: Forward-Forward (Hinton 2022), as run in the paper (algorithms.md, "FF").

Every hidden layer is trained by its own binary cross-entropy on goodness (sum of squared post-ReLU
activations) minus its width, positives carrying the true label in the first C inputs, negatives a
uniformly drawn wrong label. Inputs between layers are detached and RMS-normalised, so no gradient
crosses a layer boundary. The ReLU is straight-through in training (identity gradient).

Settings: see `Settings` below. One optimiser for all layers (AdamW with decoupled weight decay,
or SGD with momentum 0.9 and an L2 penalty); `predict` = "goodness" (paper: argmax over labels of
the summed goodness of layers 2..L) or "downstream" (a linear classifier, no bias, zero init, on the
detached normalised activations of layers 2..L of the neutral-label input). When `downstream_lr`
is given (or predict = "downstream") that classifier is trained alongside in its own parameter
group, as the paper did. The learning rates of both groups decay linearly over the second half of
the epoch budget (`cooldown`: the last epoch runs at 2/E of the rate).
Validation: "acc" of the prediction mode; "loss" is the expected layer loss (sum over layers of the
BCE, or of the SymBa term, negatives averaged over every wrong label, no peer term) in goodness
mode, the classifier's cross-entropy in downstream mode.

`loss: symba` (Lee and Song 2023, "SymBa: Symmetric Backpropagation-Free Contrastive Learning with
Forward-Forward Algorithm for Optimizing Convergence", arXiv 2303.08418) keeps the network, the
negatives, the optimiser and the prediction, and replaces each layer's two BCE terms by one term on
the goodness gap of a positive and its own negative (the same image with a wrong label):

    L = mean_i softplus(-alpha * (g_pos,i - g_neg,i)),    g = sum_j z_j^2 / d  (mean squared activation)

so a pair pushes its positive up and its negative down by the same amount. The paper's loss section
was not reachable; the form and alpha = 4 follow implementations citing it, which take the gap of
*mean* squared activations (the scale alpha = 4 is set for); hence g / d here, where FF's logit uses
the sum. The paper's "Intrinsic Class Pattern" (a class pattern replacing FF's label overlay) is not
built: its definition could not be found.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bpfree import hparams, models
from bpfree.hparams import SettingError, hp
from bpfree.algorithms.base import (SGD, Algorithm, Cost, Stage, accuracy, adam, chunked, minibatch_epoch,
                                    scores_metrics, train_batch)
from bpfree.data import Data

EPS = 1e-8  # as the reference implementation: z / (rms(z) + eps)


def rms_norm(z: torch.Tensor) -> torch.Tensor:
    """Divide each row by its root-mean-square (length normalisation)."""
    return z / (z.pow(2).mean(-1, keepdim=True).sqrt() + EPS)


class StraightThroughReLU(torch.autograd.Function):
    """ReLU forward, identity backward (the reference implementation's ReLU_full_grad)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad


class FFNet(nn.Module):
    """Hidden layers, the peer-normalisation running means and the optional downstream classifier."""

    def __init__(self, widths: list[int], n_classes: int, downstream: bool):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        for layer in self.layers:
            nn.init.normal_(layer.weight, 0.0, layer.weight.shape[0] ** -0.5)  # std 1/sqrt(fan_out)
            nn.init.zeros_(layer.bias)
        for i, d in enumerate(widths[1:]):
            self.register_buffer(f"running{i}", torch.full((d,), 0.5))  # reference init 0.5
        feats = sum(widths[2:]) if len(widths) > 2 else widths[-1]
        self.classifier = nn.Linear(feats, n_classes, bias=False) if downstream else None
        if self.classifier is not None:
            nn.init.zeros_(self.classifier.weight)

    def running(self, i: int) -> torch.Tensor:
        return getattr(self, f"running{i}")


def cooldown(e: int, E: int) -> float:
    """Learning-rate factor of the reference schedule at 0-based epoch e of a budget of E epochs:
    1 in the first half, then 2(1+E-e)/E."""
    return 2.0 * (1 + E - e) / E if e > E // 2 else 1.0


@dataclass(frozen=True, kw_only=True)
class Settings(hparams.Settings):
    lr: float = hparams.lr("learning rate of the layers' parameter group")
    batch_size: int = hparams.batch_size("positive examples per step (each with one negative; paper 100)")
    optimizer: str = hp("adamw", choices=("adamw", "sgd"), doc="AdamW (weight_decay) or SGD, momentum 0.9 (l2)")
    weight_decay: float = hparams.weight_decay("decoupled weight decay of the layers (optimizer adamw)")
    l2: float = hparams.l2("L2 penalty of the layers (optimizer sgd)")
    predict: str = hp("goodness", choices=("goodness", "downstream"),
                      doc="argmax of the summed goodness of layers 2..L (paper), or a linear classifier on them")
    downstream_lr: float | None = hparams.lr("learning rate of the downstream classifier (null: none trained)",
                                             default=None)
    downstream_weight_decay: float = hparams.weight_decay("decoupled decay of the classifier (optimizer adamw)")
    downstream_l2: float = hparams.l2("L2 penalty of the classifier (optimizer sgd)")
    peer_weight: float = hp(0.03, low=0.0, doc="weight of the peer-normalisation penalty")
    peer_momentum: float = hp(0.9, low=0.0, high=1.0, high_open=True,
                              doc="momentum of the running mean activity of the peer normalisation")
    loss: str = hp("ff", choices=("ff", "symba"),
                   doc="per-layer loss: FF's BCE on positives and negatives (Hinton), or SymBa's "
                       "softplus(-alpha * gap) on the goodness gap of each positive and its negative")
    alpha: float | None = hp(None, low=0.0, low_open=True,
                             doc="loss symba: scale of the goodness gap (4 in implementations citing the paper)")

    def check(self) -> None:
        if self.loss == "symba" and self.alpha is None:
            raise SettingError("alpha", "loss symba scales the goodness gap by alpha: give it (4 in the literature)")
        if self.loss == "ff" and self.alpha is not None:
            raise SettingError("alpha", "loss ff has no alpha (its logit is goodness minus width)")
        if self.predict == "downstream" and self.downstream_lr is None:
            raise SettingError("downstream_lr", "predict = downstream trains a classifier: give its downstream_lr")
        hparams.check_decay(self, self.optimizer, self.optimizer == "adamw",
                            ("weight_decay", "downstream_weight_decay"), ("l2", "downstream_l2"))

    def optimizer_label(self) -> str:
        return ("AdamW (decoupled weight decay)" if self.optimizer == "adamw"
                else "SGD, momentum 0.9 (L2 penalty)")


def expected_loss(g: torch.Tensor, widths: torch.Tensor, y: torch.Tensor, loss: str,
                  alpha: float | None) -> torch.Tensor:
    """The validation loss: the training loss's expectation over the uniform draw of the wrong
    label, summed over layers. g: goodness (N, C, L) of every candidate label; widths: (L,).
    ff: BCE on goodness - width, positives and negatives weighted equally as in a 2B training
    batch, negatives averaged over the C-1 wrong labels; symba: the SymBa term of the true label
    against each wrong one (on mean squared activations), averaged over the C-1 wrong labels."""
    C = g.shape[1]
    pos = F.one_hot(y, C).to(g.dtype)[:, :, None]  # (N, C, 1)
    if loss == "symba":
        m = g / widths
        gap = (m * pos).sum(1, keepdim=True) - m  # (N, C, L); 0 at the true label
        return ((F.softplus(-alpha * gap) * (1 - pos)).sum(1) / (C - 1)).mean(0).sum()
    logits = g - widths
    bce = F.binary_cross_entropy_with_logits(logits, pos.expand_as(logits), reduction="none")
    l_pos, l_neg = (bce * pos).sum(1), (bce * (1 - pos)).sum(1) / (C - 1)
    return (0.5 * (l_pos + l_neg)).mean(0).sum()


class ForwardForward(Algorithm):
    Settings = Settings
    LOCALITY = "layer-local"
    ARCHITECTURES = ("mlp",)

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        hp = self.hp
        self.widths = models.mlp_widths(arch, self.shape)
        self.L = len(self.widths) - 1
        C = self.n_classes
        if self.widths[0] < C:
            raise ValueError(f"ff: input size {self.widths[0]} is smaller than the {C} label slots")
        self.predict_mode = hp.predict
        self.downstream = hp.downstream_lr is not None
        self.net = FFNet(self.widths, C, self.downstream).to(self.device)
        self.first = 1 if self.L > 1 else 0  # goodness of layers 2..L (layer 1 alone if L = 1)
        sgd = hp.optimizer == "sgd"
        groups = [{"params": list(self.net.layers.parameters()), "lr": hp.lr,
                   "weight_decay": hp.l2 if sgd else hp.weight_decay}]
        if self.downstream:
            groups.append({"params": list(self.net.classifier.parameters()), "lr": hp.downstream_lr,
                           "weight_decay": hp.downstream_l2 if sgd else hp.downstream_weight_decay})
        if sgd:  # fused, as adam: on a CPU the unfused update costs as much as a layer's matmuls
            self.opt = SGD(groups, momentum=0.9, fused=True)
        else:  # each group's lr and weight_decay override adam's defaults
            self.opt = adam(groups, hp.lr, weight_decay=hp.weight_decay)
        self.peer_weight = hp.peer_weight
        self.peer_momentum = hp.peer_momentum

    def begin_stage(self, stage: Stage, data: Data, max_epochs: int) -> None:
        # a scheduler, not a counter: its state is saved with the run's checkpoint, so a resumed
        # run goes on with the learning rate it was killed at
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: cooldown(e, max_epochs))

    # ---- training -----------------------------------------------------------------------------

    def _embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Flattened x with the one-hot label in the first C inputs, then length-normalised."""
        a = x.flatten(1).clone()
        a[:, :self.n_classes] = F.one_hot(labels, self.n_classes).to(a.dtype)
        return rms_norm(a)

    def _peer_loss(self, i: int, z_pos: torch.Tensor) -> torch.Tensor:
        """Update layer i's running mean activity (positives) and return its peer-norm penalty."""
        buf = self.net.running(i)
        run = self.peer_momentum * buf + (1 - self.peer_momentum) * z_pos.mean(0)
        buf.copy_(run.detach())
        return (run.mean() - run).pow(2).mean()

    def _ff_loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(z.pow(2).sum(1) - z.shape[1], target)

    def _symba_loss(self, z_pos: torch.Tensor, z_neg: torch.Tensor) -> torch.Tensor:
        """SymBa: mean of softplus(-alpha (g_pos - g_neg)), g the mean squared activation of a row;
        row i of z_neg is the negative of row i of z_pos."""
        gap = z_pos.pow(2).mean(1) - z_neg.pow(2).mean(1)
        return F.softplus(-self.hp.alpha * gap).mean()

    def _neutral_features(self, x: torch.Tensor) -> torch.Tensor:
        """Detached normalised activations of layers 2..L for the neutral label (1/C everywhere)."""
        with torch.no_grad():
            a = x.flatten(1).clone()
            a[:, :self.n_classes] = 1.0 / self.n_classes
            z, feats = rms_norm(a), []
            for i, layer in enumerate(self.net.layers):
                z = rms_norm(torch.relu(layer(z)))
                if i >= self.first:
                    feats.append(z)
            return torch.cat(feats, 1)

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        self.net.train()
        C, dev = self.n_classes, self.device

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            x, y = train_batch(data, idx, gen), data.y_train[idx]
            B = len(y)
            wrong = (y + torch.randint(1, C, (B,), generator=gen, device=dev)) % C  # uniform wrong label
            z = self._embed(x.repeat(2, *([1] * (x.dim() - 1))), torch.cat([y, wrong]))
            target = torch.cat([torch.ones(B, device=dev), torch.zeros(B, device=dev)])
            loss = torch.zeros((), device=dev)
            for i, layer in enumerate(self.net.layers):
                z = StraightThroughReLU.apply(layer(z))
                if self.peer_weight > 0:
                    loss = loss + self.peer_weight * self._peer_loss(i, z[:B])
                if self.hp.loss == "ff":
                    loss = loss + self._ff_loss(z, target)
                else:
                    loss = loss + self._symba_loss(z[:B], z[B:])
                z = rms_norm(z.detach())  # the next layer's loss stays local to it
            if self.downstream:
                loss = loss + F.cross_entropy(self.net.classifier(self._neutral_features(x)), y)
            return loss

        mean = minibatch_epoch(self.opt, loss_fn, len(data.y_train), self.hp.batch_size, gen, dev)
        self.sched.step()
        return mean

    # ---- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def goodness(self, x: torch.Tensor) -> torch.Tensor:
        """Goodness (N, C, L) of every layer for every candidate label, with ONE unlabelled pass of
        layer 1: the RMS of the embedded input does not depend on the label (the one-hot has unit
        norm), so layer 1's pre-activation for label c is W_1 a_0 / r + b_1 + W_1[:, c] / r."""
        C = self.n_classes
        a0 = x.flatten(1).clone()
        a0[:, :C] = 0
        r = ((a0.pow(2).sum(1) + 1.0) / a0.shape[1]).sqrt() + EPS  # (N,)
        W1 = self.net.layers[0].weight
        h = F.linear(a0 / r[:, None], W1, self.net.layers[0].bias)  # (N, d_1)
        h = h[:, None, :] + W1[:, :C].T[None] / r[:, None, None]  # (N, C, d_1)
        return self._goodness_from(h.flatten(0, 1)).view(len(x), C, self.L)

    def _goodness_from(self, h1: torch.Tensor) -> torch.Tensor:
        """Goodness (M, L) given layer 1's pre-activations (M, d_1)."""
        z = torch.relu(h1)
        out = [z.pow(2).sum(1)]
        for layer in self.net.layers[1:]:
            z = torch.relu(layer(rms_norm(z)))
            out.append(z.pow(2).sum(1))
        return torch.stack(out, 1)

    @torch.no_grad()
    def goodness_naive(self, x: torch.Tensor) -> torch.Tensor:
        """The same (N, C, L) by C full labelled passes (reference for tests and the benchmark)."""
        C = self.n_classes
        out = []
        for c in range(C):
            a = self._embed(x, torch.full((len(x),), c, dtype=torch.long, device=x.device))
            out.append(self._goodness_from(self.net.layers[0](a)))
        return torch.stack(out, 1)

    def _chunk(self) -> int:
        return max(1, 2 ** 22 // (self.n_classes * max(self.widths[1:])))  # ~16 MB per activation

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        if self.predict_mode == "downstream":
            return chunked(lambda c: self.net.classifier(self._neutral_features(c)), x)
        return chunked(lambda c: self.goodness(c)[:, :, self.first:].sum(2), x, self._chunk())

    @torch.no_grad()
    def validate(self, stage: Stage, data: Data) -> dict[str, float]:
        self.net.eval()
        y = data.y_val
        if self.predict_mode == "downstream":
            return scores_metrics(self.predict(data.x_val), y)
        g = chunked(self.goodness, data.x_val, self._chunk())  # (N, C, L)
        widths = torch.tensor(self.widths[1:], device=g.device, dtype=g.dtype)
        loss = expected_loss(g, widths, y, self.hp.loss, self.hp.alpha)
        return {"acc": accuracy(g[:, :, self.first:].sum(2), y), "loss": loss.item()}

    def layer_accuracies(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.net.eval()
        g = chunked(self.goodness, x, self._chunk())
        return {f"layer{i + 1}": accuracy(g[:, :, i], y) for i in range(self.L)}

    # ---- analytic cost ------------------------------------------------------------------------

    def _layer_macs(self) -> list[int]:
        w = self.widths
        return [w[i] * w[i + 1] for i in range(self.L)]

    def _downstream_macs(self) -> int:
        return sum(self._layer_macs()) + self.net.classifier.in_features * self.n_classes

    def cost(self, stage: Stage) -> Cost:
        layer = sum(self._layer_macs())
        # per training sample: a positive and a negative row, each forward + weight gradient of
        # every layer (no input gradients: inputs are detached)
        train = 2 * 2 * layer
        if self.downstream:  # neutral forward, classifier forward + weight gradient
            train += layer + 2 * self.net.classifier.in_features * self.n_classes
        return Cost(train=train, eval=self.predict_macs())

    def predict_macs(self) -> int:
        if self.predict_mode == "downstream":
            return self._downstream_macs()
        m, C = self._layer_macs(), self.n_classes
        # one unlabelled pass of layer 1, C column additions, C passes of layers 2..L
        return m[0] + C * self.widths[1] + C * sum(m[1:])


ALGORITHM = ForwardForward
