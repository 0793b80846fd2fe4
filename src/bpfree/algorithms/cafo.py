"""CaFo: Cascaded Forward (Zhao et al. 2023) on the 3-block CNN of algorithms.md.

Every block k has its own predictor Flatten -> Linear(flat_k, C) on the block's output. The blocks
are either frozen at their random initialisation (`block: rand`) or first trained for a fixed
number of epochs by direct feedback alignment (`block: dfa`) and then frozen; the predictors are
then trained one after another (one stage per block).

Settings: see `Settings` below (predictors trained by Adam with an L2 penalty, or solved in closed
form with a ridge for `loss: mse`; DFA phase by its own Adam).

Frozen block outputs are computed once per stage for the whole training and validation split
(block k's from block k-1's cache) and reused by every predictor epoch. Under per-batch
augmentation (CIFAR) the training images differ every batch, so there the frozen blocks run per
batch (only the validation features are cached).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bpfree import hparams, models
from bpfree.algorithms.dfa import dfa_backward, register_feedback
from bpfree.hparams import SettingError, hp
from bpfree.algorithms.base import (Algorithm, Cost, FrozenFeatures, Stage, accuracy, adam, chunked, minibatch_epoch,
                                    train_batch)
from bpfree.data import Data

BLOCKS, LOSSES, COMBINE = ("rand", "dfa"), ("ce", "mse", "sl"), ("sum", "softmax-sum")


# ---- sparsemax (Martins and Astudillo 2016) --------------------------------------------------------

def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of z onto the probability simplex."""
    zs, _ = z.sort(dim=1, descending=True)
    k = torch.arange(1, z.shape[1] + 1, device=z.device, dtype=z.dtype)
    cum = zs.cumsum(1)
    support = (1 + k * zs > cum).sum(1, keepdim=True)  # size of the support, >= 1
    tau = (cum.gather(1, support - 1) - 1) / support.to(z.dtype)
    return (z - tau).clamp_min(0)


def sparsemax_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean sparsemax loss: -z_y + 1/2 sum_{j in S(z)} (z_j^2 - tau^2) + 1/2, written in the
    equivalent form <z, p> - 1/2 |p|^2 - z_y + 1/2 with p = sparsemax(z). With p detached,
    autograd gives the exact gradient p - onehot(y) (Danskin: p maximises <z, p> - 1/2 |p|^2)."""
    p = sparsemax(z.detach())
    return ((z * p).sum(1) - 0.5 * (p * p).sum(1) - z.gather(1, y[:, None]).squeeze(1) + 0.5).mean()


def least_squares(feats: torch.Tensor, y: torch.Tensor, n_classes: int, ridge: float = 0.0,
                  chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) minimising mean_i |W a_i + b - onehot(y_i)|^2 + ridge |W|^2, solved in float64 from
    the normal equations accumulated over row chunks (memory d^2, not N d)."""
    d = feats[0].numel()
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=feats.device)
    rhs = torch.zeros(d + 1, n_classes, dtype=torch.float64, device=feats.device)
    for a, t in zip(feats.split(chunk), y.split(chunk)):
        a = torch.cat([a.flatten(1).double(), a.new_ones(len(a), 1, dtype=torch.float64)], 1)
        gram += a.T @ a
        rhs += a.T @ F.one_hot(t, n_classes).double()
    n = len(y)
    gram /= n
    rhs /= n
    gram[:d, :d] += ridge * torch.eye(d, dtype=torch.float64, device=feats.device)  # bias unpenalised
    # QR with column pivoting (gelsy) also copes with a singular Gram (dead ReLU channels)
    sol = torch.linalg.lstsq(gram.cpu(), rhs.cpu(), driver="gelsy").solution.to(feats.device)
    return sol[:d].T.float(), sol[d].float()


# ---- the network -----------------------------------------------------------------------------------

class CaFoNet(nn.Module):
    """Blocks, one predictor per block, and (DFA) the auxiliary head and fixed feedback matrices."""

    def __init__(self, channels: list[int], shape: tuple[int, ...], n_classes: int, dfa: bool):
        super().__init__()
        ins = [shape[0], *channels[:-1]]
        self.blocks = nn.ModuleList(models.conv_block(a, b) for a, b in zip(ins, channels))
        flat = models.cnn_flat(channels, shape)
        self.heads = nn.ModuleList(nn.Linear(f, n_classes) for f in flat)
        if dfa:
            self.aux = nn.Linear(flat[-1], n_classes)
            # B_k of blocks 1..K-1: (C, flat_k) Gaussian, rows of unit L2 norm
            register_feedback(self, n_classes, flat[:-1], "unit-rows")

    def feedback(self, k: int) -> torch.Tensor:
        return getattr(self, f"feedback{k}")

    def features(self, x: torch.Tensor, upto: int) -> torch.Tensor:
        """Output of blocks 1..upto+1 (block indices 0..upto)."""
        for k in range(upto + 1):
            x = self.blocks[k](x)
        return x


@dataclass(frozen=True, kw_only=True)
class Settings(hparams.Settings):
    block: str = hp("rand", choices=BLOCKS, doc="blocks frozen at random init, or first trained by DFA")
    loss: str = hp("ce", choices=LOSSES, doc="predictor loss: cross-entropy (paper), closed-form least "
                                            "squares against one-hot, or sparsemax loss")
    combine: str = hp("sum", choices=COMBINE, doc="argmax of the summed raw outputs (paper) or of summed softmaxes "
                                                  "(original CaFo code)")
    batch_size: int = hparams.batch_size()
    lr: float | None = hparams.lr("Adam learning rate of the predictors (loss ce or sl)", default=None)
    l2: float = hparams.l2("L2 penalty of the predictors' Adam (loss ce or sl)")
    ridge: float = hp(0.0, low=0.0, doc="ridge of the closed-form least-squares predictors (loss mse)")
    dfa_epochs: int | None = hp(None, low=1, unit="epochs", doc="fixed length of the DFA phase (block dfa)")
    dfa_lr: float | None = hparams.lr("Adam learning rate of the DFA phase (block dfa)", default=None)
    dfa_l2: float = hparams.l2("L2 penalty of the DFA phase's Adam (block dfa)")

    def check(self) -> None:
        gradient = self.loss != "mse"
        for name, needed in (("lr", gradient), ("dfa_lr", self.block == "dfa"), ("dfa_epochs", self.block == "dfa")):
            if needed and getattr(self, name) is None:
                raise SettingError(name, f"block {self.block} with loss {self.loss} needs {name}")
            if not needed and getattr(self, name) is not None:
                raise SettingError(name, f"block {self.block} with loss {self.loss} does not use {name}")
        for name, used in (("l2", gradient), ("ridge", not gradient), ("dfa_l2", self.block == "dfa")):
            if not used and getattr(self, name):
                raise SettingError(name, f"block {self.block} with loss {self.loss} does not use {name}")

    def optimizer_label(self) -> str:
        head = "Adam (L2 penalty)" if self.loss != "mse" else "closed-form least squares (ridge)"
        return head + ("; DFA phase: Adam (L2 penalty)" if self.block == "dfa" else "")


class CaFo(Algorithm):
    Settings = Settings
    LOCALITY = "layer-local"  # the predictors; the DFA phase of block dfa is feedback-alignment
    ARCHITECTURES = ("cnn",)

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        self.block_mode, self.loss, self.combine = self.hp.block, self.hp.loss, self.hp.combine
        self.channels: list[int] = list(arch["channels"])
        self.K = len(self.channels)
        self.flat = models.cnn_flat(self.channels, self.shape)
        self.block_macs = models.cnn_block_macs(self.channels, self.shape)
        self.net = CaFoNet(self.channels, self.shape, self.n_classes, self.block_mode == "dfa").to(self.device)
        # output of the frozen blocks 1..k+1 for stage k
        self.frozen = FrozenFeatures(lambda x, depth: self.net.features(x, depth - 1),
                                     lambda j, a: self.net.blocks[j](a))
        if self.block_mode == "rand":
            self._freeze()
        else:
            params = [*self.net.blocks.parameters(), *self.net.aux.parameters()]
            self.dfa_opt = adam(params, self.hp.dfa_lr, l2=self.hp.dfa_l2)

    @property
    def locality(self) -> str:
        return "feedback-alignment+layer-local" if self.block_mode == "dfa" else self.LOCALITY

    def _freeze(self) -> None:
        """Blocks fixed from now on; BatchNorm in evaluation mode (running statistics)."""
        self.net.blocks.requires_grad_(False)
        self.net.blocks.eval()

    def stages(self) -> list[Stage]:
        out = [Stage("dfa", monitor="acc", epochs=self.hp.dfa_epochs)] if self.block_mode == "dfa" else []
        epochs = 1 if self.loss == "mse" else None  # closed form: one "epoch" solves it
        return out + [Stage(f"block{k + 1}", monitor="loss", epochs=epochs, index=k) for k in range(self.K)]

    # ---- DFA block training -------------------------------------------------------------------------

    def dfa_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Set the DFA gradients of one batch (blocks and aux head); returns the aux CE loss.
        Each block sees its input detached, so no gradient crosses a block boundary; blocks 1..K-1
        get the output gradient e B_k, e = (softmax(logits) - onehot(y)) / batch (the error of the
        mean CE loss); the last block and the aux head get ordinary backprop of the CE loss (CaFo's
        rule; the paper's DFA, `bpfree.algorithms.dfa`, sends e B_K to the last block too). The
        mechanics are dfa's own (`bpfree.algorithms.dfa.dfa_backward`)."""
        outs, h = [], x
        for block in self.net.blocks:
            h = block(h.detach())
            outs.append(h)
        logits = self.net.aux(h.flatten(1))
        loss = F.cross_entropy(logits, y)
        return dfa_backward(loss, logits, y, outs[:-1], [self.net.feedback(k) for k in range(self.K - 1)])

    def _dfa_epoch(self, data: Data, gen: torch.Generator) -> torch.Tensor:
        self.net.blocks.train()
        return minibatch_epoch(self.dfa_opt,
                               lambda idx: self.dfa_backward(train_batch(data, idx, gen), data.y_train[idx]),
                               len(data.y_train), self.hp.batch_size, gen, self.device)

    # ---- predictors -----------------------------------------------------------------------------

    def begin_stage(self, stage: Stage, data: Data, max_epochs: int) -> None:
        if stage.name == "dfa":
            return
        self.frozen.prepare(stage.index + 1, data)
        if self.loss != "mse":  # the closed-form predictor needs no optimiser (nor lr)
            self.opt = adam(self.net.heads[stage.index].parameters(), self.hp.lr, l2=self.hp.l2)

    def end_stage(self, stage: Stage, data: Data) -> None:
        if stage.name == "dfa":
            self._freeze()
        elif stage.index == self.K - 1:
            self.frozen.clear()

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss == "ce":
            return F.cross_entropy(out, y)
        if self.loss == "sl":
            return sparsemax_loss(out, y)
        return (out - F.one_hot(y, self.n_classes).to(out.dtype)).pow(2).sum(1).mean()

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        if stage.name == "dfa":
            return self._dfa_epoch(data, gen)
        head = self.net.heads[stage.index]
        if self.loss == "mse":
            feats = self.frozen.train_split(data, gen)
            w, b = least_squares(feats, data.y_train, self.n_classes, self.hp.ridge)
            with torch.no_grad():
                head.weight.copy_(w)
                head.bias.copy_(b)
                return self._loss(chunked(lambda a: head(a.flatten(1)), feats), data.y_train)
        return minibatch_epoch(
            self.opt, lambda idx: self._loss(head(self.frozen.batch(data, idx, gen).flatten(1)), data.y_train[idx]),
            len(data.y_train), self.hp.batch_size, gen, self.device)

    @torch.no_grad()
    def validate(self, stage: Stage, data: Data) -> dict[str, float]:
        if stage.name == "dfa":
            self.net.blocks.eval()
            out = chunked(lambda x: self.net.aux(self.net.features(x, self.K - 1).flatten(1)), data.x_val)
            return {"acc": accuracy(out, data.y_val), "loss": F.cross_entropy(out, data.y_val).item()}
        out = chunked(lambda a: self.net.heads[stage.index](a.flatten(1)), self.frozen.val)
        return {"acc": accuracy(out, data.y_val), "loss": self._loss(out, data.y_val).item()}

    # ---- prediction -----------------------------------------------------------------------------

    @torch.no_grad()
    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs of every predictor, (N, K, C)."""
        outs, h = [], x
        for block, head in zip(self.net.blocks, self.net.heads):
            h = block(h)
            outs.append(head(h.flatten(1)))
        return torch.stack(outs, 1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        out = chunked(self._outputs, x)
        return (out.softmax(2) if self.combine == "softmax-sum" else out).sum(1)

    def layer_accuracies(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.net.eval()
        out = chunked(self._outputs, x)
        return {f"block{k + 1}": accuracy(out[:, k], y) for k in range(self.K)}

    # ---- cost -----------------------------------------------------------------------------------

    def cost(self, stage: Stage) -> Cost:
        C, bm, flat = self.n_classes, self.block_macs, self.flat
        if stage.name == "dfa":
            # forward of every block + conv weight gradients (block inputs are detached: no input
            # gradient of a first op), aux head forward/weight/input gradient, e B_k projections
            return Cost(train=2 * sum(bm) + 3 * flat[-1] * C + C * sum(flat[:-1]), eval=sum(bm) + flat[-1] * C)
        k = stage.index
        head = flat[k] * C
        sizes = self.meta.get("sizes", {})
        n_tr, n_val = sizes.get("train", 1), sizes.get("val", 0)
        augment = bool(self.meta.get("augment"))
        # caching block k's output for train + val (from block k-1's cache, or from images at k = 0);
        # under augmentation only val is cached and the frozen blocks run per training batch
        once = bm[k] if not augment else round(bm[k] * n_val / (n_tr + n_val))
        frozen = sum(bm[:k + 1]) if augment else 0
        if self.loss == "mse":  # Gram matrix and right-hand side, then a (d+1)^3 solve once
            d = flat[k] + 1
            once += round(d ** 3 / (n_tr + n_val))
            return Cost(train=d * d + d * C + head + frozen, eval=head, once=once)
        return Cost(train=2 * head + frozen, eval=head, once=once)

    def predict_macs(self) -> int:
        return sum(self.block_macs) + sum(self.flat) * self.n_classes


ALGORITHM = CaFo
