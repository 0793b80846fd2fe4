"""MF: Mono-Forward (Gong, Li, Abdulla 2025).

Each hidden layer i owns a projection M_i (C x d_i); its class scores are G_i = a_i M_i^T and its
loss is cross-entropy(G_i, y). No gradient crosses a layer boundary.

Settings: see `Settings` below (mode "greedy" is the paper's: layer by layer, each with its own
Adam and early stopping on the validation local loss). In greedy mode the frozen layers' outputs
are computed once per stage for the whole training and validation split, not per batch (unless the
data set is augmented per batch): `bpfree.algorithms.base.FrozenFeatures`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bpfree import hparams, models
from bpfree.hparams import hp
from bpfree.algorithms.base import (Algorithm, Cost, FrozenFeatures, Stage, accuracy, adam, chunked,
                                    minibatch_epoch, scores_metrics, train_batch)
from bpfree.data import Data


class MonoForwardNet(nn.Module):
    """Hidden ReLU layers of the MLP plus one projection matrix per hidden layer."""

    def __init__(self, widths: list[int], n_classes: int):
        super().__init__()
        self.hidden = nn.ModuleList(models.hidden_linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.proj = nn.ParameterList(
            nn.Parameter(torch.empty(n_classes, d).uniform_(-d ** -0.5, d ** -0.5)) for d in widths[1:])

    def layer(self, i: int, a_prev: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.hidden[i](a_prev))

    def scores(self, i: int, a: torch.Tensor) -> torch.Tensor:
        return a @ self.proj[i].T

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        acts, a = [], x.flatten(1)
        for i in range(len(self.hidden)):
            a = self.layer(i, a)
            acts.append(a)
        return acts


@dataclass(frozen=True, kw_only=True)
class Settings(hparams.Settings):
    lr: float = hparams.lr("Adam learning rate of every layer and its projection")
    l2: float = hparams.l2("L2 penalty of the layers' Adam (0 in the paper)")
    batch_size: int = hparams.batch_size()
    mode: str = hp("greedy", choices=("greedy", "simultaneous"),
                   doc="greedy: layer by layer, each with its own Adam and early stopping (paper); "
                       "simultaneous: all layers in one pass on detached inputs")
    predict: str = hp("last", choices=("last", "sum"), doc="argmax of the last layer's G_L (paper) or of sum_i G_i")

    def optimizer_label(self) -> str:
        return "Adam (L2 penalty)" + (", one per layer" if self.mode == "greedy" else "")


class MonoForward(Algorithm):
    Settings = Settings
    LOCALITY = "layer-local"
    ARCHITECTURES = ("mlp",)

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        self.widths = models.mlp_widths(arch, self.shape)
        self.net = MonoForwardNet(self.widths, self.n_classes).to(self.device)
        self.mode = self.hp.mode
        self.predict_mode = self.hp.predict
        self.L = len(self.widths) - 1
        self.frozen = FrozenFeatures(self._frozen, self.net.layer)  # inputs of the current layer (greedy)
        if self.mode == "simultaneous":
            self.opt = self._adam(self.net.parameters())

    def _adam(self, params) -> torch.optim.Optimizer:
        return adam(params, self.hp.lr, l2=self.hp.l2)

    def stages(self) -> list[Stage]:
        if self.mode == "greedy":
            # the paper stops on the validation local loss; the protocol restores the checkpoint
            # with the best validation accuracy (of the layer's own predictor G_i)
            return [Stage(f"layer{i + 1}", monitor="loss", restore="acc", index=i) for i in range(self.L)]
        return [Stage("all", monitor="acc")]

    @torch.no_grad()
    def _frozen(self, x: torch.Tensor, upto: int) -> torch.Tensor:
        """Output of frozen layers 1..upto for raw images x (upto = 0 gives the flattened input)."""
        a = x.flatten(1)
        for j in range(upto):
            a = self.net.layer(j, a)
        return a

    def begin_stage(self, stage: Stage, data: Data, max_epochs: int) -> None:
        if self.mode != "greedy":
            return
        i = stage.index
        self.frozen.prepare(i, data)  # layers 1..i are frozen: the previous stage's cache through layer i
        self.opt = self._adam([*self.net.hidden[i].parameters(), self.net.proj[i]])

    def end_stage(self, stage: Stage, data: Data) -> None:
        if self.mode == "greedy" and stage.index == self.L - 1:
            self.frozen.clear()

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        self.net.train()

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            y = data.y_train[idx]
            if self.mode == "greedy":
                i = stage.index
                a = self.net.layer(i, self.frozen.batch(data, idx, gen))
                return F.cross_entropy(self.net.scores(i, a), y)
            # simultaneous: every layer learns from its own detached input; losses add, gradients do not mix
            a, loss = train_batch(data, idx, gen).flatten(1), 0.0
            for i in range(self.L):
                a = self.net.layer(i, a.detach())
                loss = loss + F.cross_entropy(self.net.scores(i, a), y)
            return loss

        return minibatch_epoch(self.opt, loss_fn, len(data.y_train), self.hp.batch_size, gen, self.device)

    @torch.no_grad()
    def validate(self, stage: Stage, data: Data) -> dict[str, float]:
        if self.mode == "greedy":
            i = stage.index
            g = chunked(lambda a: self.net.scores(i, self.net.layer(i, a)), self.frozen.val)
            return scores_metrics(g, data.y_val)
        return scores_metrics(self.predict(data.x_val), data.y_val)

    @torch.no_grad()
    def _all_scores(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.net.scores(i, a) for i, a in enumerate(self.net.activations(x))]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        if self.predict_mode == "last":
            return chunked(lambda c: self.net.scores(self.L - 1, self.net.activations(c)[-1]), x)
        return chunked(lambda c: torch.stack(self._all_scores(c)).sum(0), x)

    def layer_accuracies(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.net.eval()
        scores = chunked(lambda c: torch.stack(self._all_scores(c), 1), x)  # (N, L, C)
        return {f"layer{i + 1}": accuracy(scores[:, i], y) for i in range(self.L)}

    def cost(self, stage: Stage) -> Cost:
        C, w = self.n_classes, self.widths
        layer = [w[i] * w[i + 1] for i in range(self.L)]
        if self.mode == "greedy":
            i = stage.index
            # forward + weight gradient of W_i, forward + gradient of M_i and of a_i; no input gradient
            head = w[i + 1] * C
            frozen = sum(layer[:i]) if self.meta.get("augment") else 0  # no cache under augmentation
            once = layer[i] if i < self.L - 1 else 0  # caching this layer's output for the next
            return Cost(train=2 * layer[i] + 3 * head + frozen, eval=layer[i] + head, once=once)
        fwd = sum(layer) + sum(d * C for d in w[1:])
        return Cost(train=2 * sum(layer) + 3 * sum(d * C for d in w[1:]), eval=fwd)

    def predict_macs(self) -> int:
        C, w = self.n_classes, self.widths
        fwd = sum(w[i] * w[i + 1] for i in range(self.L))
        return fwd + (w[-1] * C if self.predict_mode == "last" else sum(d * C for d in w[1:]))


ALGORITHM = MonoForward
