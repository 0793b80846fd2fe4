"""PEPITA: Present the Error to Perturb the Input To modulate Activity (Dellaferrera and Kreiman 2022,
"Error-driven Input Modulation: Solving the Credit Assignment Problem without a Backward Pass", ICML,
arXiv 2201.11665; code github.com/GiorgiaD/PEPITA).

Two forward passes per batch and no backward pass (field-algorithms.md, "pepita"):

    pass 1:  h_0 = x,             h_l = relu(W_l h_{l-1}) * m_l,   e     = softmax(W_L h_{L-1}) - onehot(y)
    pass 2:  h_0^mod = x + F e,   h_l^mod likewise,                e^mod = softmax(W_L h_{L-1}^mod) - onehot(y)
    hidden:  dW_l = (h_l - h_l^mod)^T h_{l-1}^mod / B         (layer 1 takes the modulated input)
    output:  dW_L = (e^mod)^T h_{L-1}^mod / B                 (the error of the *second* pass)

with rows as examples (B of them), F a fixed random (d_0, C) matrix drawn U(-1, 1) * sqrt(6 / d_0) *
`f_scale` (0.05 in the code), m_l one inverted-dropout mask per batch (keep `dropout_keep`, scaled
1 / keep) shared by both passes, no dropout on the output. dW is written into `.grad` and a fused
torch SGD steps W <- W - lr * v, v <- momentum * v + dW (+ l2 * W): the paper's
v <- 0.9 v + eta dW, W <- W - v. Testing is one clean pass (no mask); `predict` gives the logits.

The network is the paper's: bias-free Linear layers with He-uniform weights (U(+-sqrt(6 / fan_in)),
the output layer too) and ReLU, the hidden widths of the architecture entry. It is built here, not
taken from `bpfree.models.MLP`, because that MLP has biases and PEPITA's has none.

Where this departs from the paper or its code, and why:
- Input: the loader normalises images by the training split's mean and std; the paper feeds
  [0, 1] pixels, and F's scale is set for them. `input = "unit"` (default) undoes the loader's
  normalisation per batch, x * std + mean, so the network sees the paper's [0, 1] inputs;
  `input = "normalised"` feeds the loader's tensors unchanged.
- Dropout: the mask is part of h_l, applied once, as in the authors' PyTorch tutorial (their numpy
  code multiplies the difference by the mask a second time).
- Schedule: lr x `lr_decay` at fractions `lr_milestones` of the stage's epoch budget (0.6, 0.9:
  epochs 60 and 90 of the paper's 100). It is a torch MultiStepLR, saved with crash checkpoints.
  Torch's SGD scales the whole velocity by the new rate at a milestone; the paper's velocity keeps
  the old rate's contributions and decays them by the momentum only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bpfree import hparams, models
from bpfree.hparams import SettingError, hp
from bpfree.algorithms.base import (SGD, Algorithm, Cost, Stage, chunked, minibatch_epoch, train_batch)
from bpfree.data import Data


def he_uniform(d_out: int, d_in: int) -> torch.Tensor:
    bound = (6.0 / d_in) ** 0.5
    return torch.empty(d_out, d_in).uniform_(-bound, bound)


class PepitaNet(nn.Module):
    """Bias-free ReLU MLP: `weights[l]` is W_{l+1} of shape (d_{l+1}, d_l), the last one (C, d_L);
    buffer `F` is the fixed (d_0, C) input projection of the error."""

    def __init__(self, widths: list[int], n_classes: int, f_scale: float):
        super().__init__()
        dims = [*widths, n_classes]
        self.weights = nn.ParameterList(nn.Parameter(he_uniform(b, a)) for a, b in zip(dims[:-1], dims[1:]))
        d0 = widths[0]
        self.register_buffer("F", torch.empty(d0, n_classes).uniform_(-1, 1) * (6.0 / d0) ** 0.5 * f_scale)

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """[h_1, ..., h_{L-1}, logits] for flattened inputs x (N, d_0); masks: one per hidden layer."""
        out, h = [], x
        for l, W in enumerate(self.weights):
            h = h @ W.T
            if l < len(self.weights) - 1:
                h = torch.relu(h)
                if masks is not None:
                    h = h * masks[l]
            out.append(h)
        return out


def milestones(spec: str) -> list[float]:
    """"0.6,0.9" -> [0.6, 0.9]; "" -> []."""
    return [float(s) for s in spec.split(",") if s.strip()]


@dataclass(frozen=True, kw_only=True)
class Settings(hparams.Settings):
    lr: float = hparams.lr("SGD learning rate (paper: 0.1 on MNIST, 0.01 on CIFAR-10)")
    batch_size: int = hparams.batch_size("training examples per update (paper: 64)")
    momentum: float = hp(0.9, low=0.0, high=1.0, high_open=True, doc="SGD momentum (paper: 0.9; 0 is plain SGD)")
    l2: float = hparams.l2("L2 penalty of the SGD step (paper: none)")
    f_scale: float = hp(0.05, low=0.0, low_open=True,
                        doc="F = U(-1, 1) * sqrt(6 / d_0) * f_scale, the fixed error-to-input projection (paper: 0.05)")
    dropout_keep: float = hp(0.9, low=0.0, high=1.0, low_open=True,
                             doc="probability of keeping a hidden unit; one mask shared by both passes "
                                 "(paper: 0.9; 1: no dropout)")
    lr_milestones: str = hp("0.6,0.9", doc="comma-separated fractions of the stage's epoch budget at which the "
                                           "rate is multiplied by lr_decay (paper: epochs 60, 90 of 100); empty: none")
    lr_decay: float = hp(0.1, low=0.0, high=1.0, low_open=True, doc="factor applied at each milestone (paper: 0.1)")
    input: str = hp("unit", choices=("unit", "normalised"),
                    doc="unit: undo the loader's mean/std normalisation, pixels in [0, 1] as in the paper; "
                        "normalised: the loader's tensors")

    def check(self) -> None:
        try:
            ms = milestones(self.lr_milestones)
        except ValueError:
            raise SettingError("lr_milestones", "expected comma-separated numbers, e.g. \"0.6,0.9\"") from None
        if any(not 0 < m <= 1 for m in ms) or ms != sorted(ms):
            raise SettingError("lr_milestones", "fractions of the epoch budget must be in (0, 1] and increasing")

    def optimizer_label(self) -> str:
        return f"SGD, momentum {self.momentum:g} (L2 penalty)" + (
            f", lr x{self.lr_decay:g} at {self.lr_milestones} of the epochs" if self.lr_milestones.strip() else "")


class Pepita(Algorithm):
    Settings = Settings
    LOCALITY = "modulated-forward"
    ARCHITECTURES = ("mlp",)

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        self.widths = models.mlp_widths(arch, self.shape)
        self.net = PepitaNet(self.widths, self.n_classes, self.hp.f_scale).to(self.device)
        self.net.requires_grad_(False)  # no autograd graph: the updates are written into .grad
        self.opt = SGD(self.net.parameters(), lr=self.hp.lr, momentum=self.hp.momentum,
                       weight_decay=self.hp.l2, fused=True)
        if self.hp.input == "unit":
            c = len(meta["mean"])  # the loader's per-channel statistics (bpfree.data.load)
            self._std = torch.tensor(meta["std"], device=self.device).repeat_interleave(self.widths[0] // c)
            self._mean = torch.tensor(meta["mean"], device=self.device).repeat_interleave(self.widths[0] // c)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return torch.addcmul(self._mean, x, self._std) if self.hp.input == "unit" else x

    def begin_stage(self, stage: Stage, data: Data, max_epochs: int) -> None:
        # a scheduler, not a counter: saved with crash checkpoints, so a resumed run keeps its rate
        at = [max(1, round(m * max_epochs)) for m in milestones(self.hp.lr_milestones)]
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, at, gamma=self.hp.lr_decay)

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor, masks: list[torch.Tensor] | None) -> torch.Tensor:
        """Set every W_l.grad to PEPITA's dW_l for the batch (x: flattened network input (B, d_0),
        y: labels (B,)); return the first pass's mean cross-entropy (nothing is stepped)."""
        target = F.one_hot(y, self.n_classes).to(x.dtype)
        h = self.net(x, masks)
        e = h[-1].softmax(1) - target
        x_mod = x + e @ self.net.F.T
        h_mod = self.net(x_mod, masks)
        e_mod = h_mod[-1].softmax(1) - target
        below = [x_mod, *h_mod[:-1]]
        deltas = [a - b for a, b in zip(h[:-1], h_mod[:-1])] + [e_mod]
        B = len(y)
        for W, d, a in zip(self.net.weights, deltas, below):
            W.grad = d.T @ a / B
        return F.cross_entropy(h[-1], y)

    def _masks(self, B: int, gen: torch.Generator) -> list[torch.Tensor] | None:
        keep = self.hp.dropout_keep
        if keep == 1.0:
            return None
        return [(torch.rand(B, d, generator=gen, device=self.device) < keep).float() / keep
                for d in self.widths[1:]]

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        def loss_fn(idx: torch.Tensor) -> torch.Tensor:  # sets the updates; no graph, no backward
            return self.step(self._input(train_batch(data, idx, gen)), data.y_train[idx], self._masks(len(idx), gen))

        mean = minibatch_epoch(self.opt, loss_fn, len(data.y_train), self.hp.batch_size, gen, self.device)
        self.sched.step()
        return mean

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return chunked(lambda c: self.net(self._input(c))[-1], x)

    def cost(self, stage: Stage) -> Cost:
        fwd = self.predict_macs()
        # two forward passes, F e, and one outer product per layer
        return Cost(train=3 * fwd + self.widths[0] * self.n_classes, eval=fwd)

    def predict_macs(self) -> int:
        return models.mlp_macs(self.widths, self.n_classes)


ALGORITHM = Pepita
