"""ELM: random features + least squares (Huang et al. 2006), the worked example of
docs/adding-an-algorithm.md and a floor for every backpropagation-free method.

The hidden layers of the MLP keep their random initialisation; the readout W_out (C x d_L) is
the ridge solution  W_out = argmin ||A W^T - Y||^2 + ridge ||W||^2  on one-hot targets Y, solved
once in closed form. No gradient is computed at all.

Settings: `ridge` (below).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bpfree import hparams, models
from bpfree.hparams import hp
from bpfree.algorithms.base import Algorithm, Cost, Stage, chunked
from bpfree.data import Data


@dataclass(frozen=True, kw_only=True)
class Settings(hparams.Settings):
    ridge: float = hp(1e-3, low=0.0, doc="ridge of the least-squares readout")

    def optimizer_label(self) -> str:
        return "closed-form least squares (ridge)"


class ELM(Algorithm):
    Settings = Settings
    LOCALITY = "closed-form"
    ARCHITECTURES = ("mlp",)

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        self.widths = models.mlp_widths(arch, self.shape)
        self.net = models.MLP(self.widths, self.n_classes).to(self.device)  # head = the readout
        self.net.requires_grad_(False)

    def stages(self) -> list[Stage]:
        return [Stage("readout", monitor="acc", epochs=1)]  # one closed-form "epoch"

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(1)
        for layer in self.net.hidden:
            a = torch.relu(layer(a))
        return a

    @torch.no_grad()
    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        A = chunked(self._features, data.x_train)
        A1 = torch.cat([A, torch.ones(len(A), 1, device=A.device)], 1)  # bias column
        Y = F.one_hot(data.y_train, self.n_classes).to(A.dtype)
        gram = A1.T @ A1 + self.hp.ridge * torch.eye(A1.shape[1], device=A.device)
        W = torch.linalg.solve(gram, A1.T @ Y).T  # (C, d_L + 1)
        self.net.head.weight.copy_(W[:, :-1])
        self.net.head.bias.copy_(W[:, -1])
        return ((A1 @ W.T - Y) ** 2).mean()

    def cost(self, stage: Stage) -> Cost:
        d = self.widths[-1] + 1
        features = models.mlp_macs(self.widths, self.n_classes) - self.widths[-1] * self.n_classes
        # features, the Gram matrix and the right-hand side per sample (the d^3 solve is ignored)
        return Cost(train=features + d * d + d * self.n_classes, eval=self.predict_macs())

ALGORITHM = ELM
