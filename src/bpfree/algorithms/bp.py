"""BP: the end-to-end backpropagation baseline (cross-entropy, AdamW, no schedule)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bpfree import hparams, models
from bpfree.algorithms.base import (Algorithm, Cost, Stage, adam, minibatch_epoch, train_batch)
from bpfree.data import Data


@dataclass(frozen=True, kw_only=True)
class Settings(hparams.Settings):
    lr: float = hparams.lr()
    weight_decay: float = hparams.weight_decay()
    batch_size: int = hparams.batch_size()

    def optimizer_label(self) -> str:
        return "AdamW (decoupled weight decay)"


class BP(Algorithm):
    Settings = Settings
    LOCALITY = "end-to-end"
    ARCHITECTURES = ("mlp", "cnn", "cwc-cnn")
    ARCH_OPTIONS = tuple(models.MLP_OPTIONS)  # models.build builds every option

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        self.net = models.build(arch, self.shape, self.n_classes).to(self.device)
        self.opt = adam(self.net.parameters(), self.hp.lr, weight_decay=self.hp.weight_decay)

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        self.net.train()
        return minibatch_epoch(
            self.opt, lambda idx: F.cross_entropy(self.net(train_batch(data, idx, gen)), data.y_train[idx]),
            len(data.y_train), self.hp.batch_size, gen, self.device)

    def cost(self, stage: Stage) -> Cost:
        fwd = self.predict_macs()
        first = models.first_layer_macs(self.arch, self.shape)
        # forward + weight gradients + input gradients of every layer but the first
        return Cost(train=3 * fwd - first, eval=fwd)

ALGORITHM = BP
