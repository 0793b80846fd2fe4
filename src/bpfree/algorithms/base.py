"""The one interface every algorithm implements, and small helpers they share.

The training engine (`bpfree.engine.fit`) drives an algorithm through its *stages* (one stage for
end-to-end methods, one per layer or block for greedy ones). Per stage it calls `begin_stage`, then
`train_epoch` and `validate` once per epoch until the stage's epoch budget or the protocol's
early-stopping rule ends it, restores the stage's best checkpoint, and calls `end_stage`.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bpfree import hparams, models
from bpfree.data import Data, augment_batch
from bpfree.errors import ConfigError

# The validation quantities a stage may stop on or restore by, and their direction (+1: higher is better).
MONITORS = {"acc": +1, "loss": -1}


@dataclass(frozen=True)
class Stage:
    """A phase of training.

    name:    what epochs.csv shows in its `stage` column ("all", "layer2", "block1", "dfa"...).
    monitor: validation quantity that early stopping watches ("acc": higher is better, "loss": lower).
    epochs:  a fixed number of epochs without early stopping (e.g. CaFo's DFA phase), or None for
             the protocol's stopping rule (patience, epoch cap).
    restore: validation quantity whose best epoch is restored when the stage ends (default: monitor).
    index:   the layer or block (from 0) that a greedy method trains in this stage; None otherwise.

    ValueError if `monitor` or `restore` is not a key of MONITORS (a misspelt monitor would
    otherwise stop in the wrong direction without a word).
    """

    name: str
    monitor: str = "acc"
    epochs: int | None = None
    restore: str | None = None
    index: int | None = None

    def __post_init__(self):
        for key, value in (("monitor", self.monitor), ("restore", self.restore or self.monitor)):
            if value not in MONITORS:
                raise ValueError(f"stage {self.name}: {key} = {value!r}; one of {', '.join(MONITORS)}")

    @property
    def keep(self) -> str:
        """The quantity whose best epoch is restored."""
        return self.restore or self.monitor


@dataclass(frozen=True)
class Cost:
    """Analytic multiply-adds per sample of a stage: one training step, one validation pass, and
    work done once per stage (e.g. caching frozen features for train + val)."""

    train: int
    eval: int
    once: int = 0


class Algorithm:
    """Base class. Subclasses declare `Settings` (their hyperparameters, see bpfree.hparams),
    `LOCALITY` (a key of bpfree.localities.LOCALITIES) and `ARCHITECTURES` (the architecture types
    they run on), set `self.net` (an nn.Module holding every trainable tensor) in `__init__`, and
    implement `train_epoch` and `cost`. The rest has a default for the common case, overridden
    only where a method differs: one stage ("all", stopping on validation accuracy), prediction by
    `self.net` in eval mode in chunks, validation by `predict`, and the forward cost of a network
    built by `bpfree.models.build`.

    `hp` is the typed, complete settings (a dict is parsed against `Settings` first: ConfigError
    names a bad key); `self.hp.lr` and so on, never a default looked up in a dict."""

    Settings: ClassVar[type[hparams.Settings]]
    LOCALITY: ClassVar[str]
    ARCHITECTURES: ClassVar[tuple[str, ...]] = ("mlp", "cnn")
    # Architecture options that change the layers (a type's `variants` in bpfree.models, e.g. an
    # mlp's activation, batchnorm, dropout) which this algorithm builds; an entry that sets any other
    # to a non-plain value is refused by check_architecture.
    ARCH_OPTIONS: ClassVar[tuple[str, ...]] = ()
    net: nn.Module

    def __init__(self, arch: dict, meta: dict, hp: hparams.Settings | Mapping[str, Any], device: torch.device):
        check_architecture(type(self), arch, "architecture")
        if not isinstance(hp, self.Settings):
            hp = hparams.parse(self.Settings, hp)
        self.arch, self.meta, self.hp, self.device = arch, meta, hp, torch.device(device)
        self.n_classes: int = meta["n_classes"]
        self.shape: tuple[int, ...] = tuple(meta["shape"])

    @property
    def locality(self) -> str:
        """Which learning signal reaches each layer (a bpfree.localities.LOCALITIES key, or two joined by "+" for
        an algorithm with phases of different kinds)."""
        return self.LOCALITY

    def stages(self) -> list[Stage]:
        """The phases of training; default: one end-to-end stage stopping on validation accuracy."""
        return [Stage("all", monitor="acc")]

    def begin_stage(self, stage: Stage, data: Data, max_epochs: int) -> None:
        """Called once before a stage's first epoch (`max_epochs` is its epoch budget)."""

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        """One pass over the training split. Returns the mean training loss as a 0-d tensor on the
        device (no host synchronisation inside the loop)."""
        raise NotImplementedError

    def validate(self, stage: Stage, data: Data) -> dict[str, float]:
        """Validation metrics of the stage: {"acc": percent, "loss": float}, and any other quantity
        of the validation split (each key k becomes the column `val_k` of epochs.csv). Default:
        accuracy and cross-entropy of `predict`'s scores."""
        return scores_metrics(self.predict(data.x_val), data.y_val)

    def epoch_metrics(self, stage: Stage, data: Data) -> dict[str, float]:
        """Optional per-epoch quantities besides validation ones (columns of epochs.csv, named as
        the keys); called after `validate`, a diagnostic: outside the epoch's `seconds`, the run's
        metered time and energy and its CPU time. See docs/adding-a-metric.md."""
        return {}

    def run_metrics(self, data: Data) -> dict[str, float]:
        """Optional per-run quantities of the finished model (keys of metrics.json, hence columns of
        summary.csv); called once after training, before the test evaluation. See
        docs/adding-a-metric.md."""
        return {}

    def end_stage(self, stage: Stage, data: Data) -> None:
        """Called after the stage's best checkpoint is restored (freeze, cache features...)."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, C) of the finished model; argmax is the prediction. Default: `self.net`
        in eval mode, in chunks (bounded memory)."""
        self.net.eval()
        return chunked(self.net, x)

    def cost(self, stage: Stage) -> Cost:
        """Analytic multiply-adds of the stage (the engine sums them into train_flops)."""
        raise NotImplementedError

    def predict_macs(self) -> int:
        """Multiply-adds to predict one sample. Default: a forward pass of the network that
        `bpfree.models.build` makes of the architecture."""
        return models.build_macs(self.arch, self.shape, self.n_classes)

    def state_dict(self) -> dict:
        return copy.deepcopy(self.net.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def layer_accuracies(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Optional diagnostic: accuracy (percent) of each layer's or block's own predictor."""
        return {}


def check_architecture(cls: type[Algorithm], arch: dict, where: str) -> None:
    """ConfigError naming `where` if `cls` cannot run on the architecture entry `arch`: a type not
    in its ARCHITECTURES, or an option that changes the layers and is not in its ARCH_OPTIONS."""
    name = cls.__module__.rsplit(".", 1)[-1]
    if arch["type"] not in cls.ARCHITECTURES:
        raise ConfigError(f"{where}: {name} runs on {' or '.join(cls.ARCHITECTURES)} "
                          f"architectures, not {arch['type']!r}")
    unbuilt = [k for k in models.variant_keys(arch) if k not in cls.ARCH_OPTIONS]
    if unbuilt:
        raise ConfigError(f"{where}: {name} builds the plain {arch['type']} network and does not implement "
                          f"{', '.join(f'{k}: {str(arch[k]).lower()}' for k in unbuilt)}")


class FrozenFeatures:
    """Outputs of a greedy method's frozen layers (or blocks) for the whole training and validation
    splits, computed once per stage instead of per batch, and extended one layer per stage.

    `prepare(depth, ...)` makes the cache hold the output of the first `depth` frozen layers: from
    the cache of depth - 1 through `layer(depth - 1, a)` when that is what it holds, else from the
    images through `through(x, depth)`. Under per-batch augmentation the training images differ
    every batch, so only the validation split is cached and `train(...)` runs the frozen layers
    per batch. The cache is rebuilt from the weights (the engine replays `begin_stage` on resume),
    so it needs no checkpoint."""

    def __init__(self, through: Callable[[torch.Tensor, int], torch.Tensor],
                 layer: Callable[[int, torch.Tensor], torch.Tensor]):
        self.through, self.layer = through, layer
        self.depth: int | None = None
        self.feats: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def prepare(self, depth: int, data: Data) -> None:
        if self.depth == depth - 1 and "val" in self.feats:
            self.feats = {k: chunked(lambda a: self.layer(depth - 1, a), v) for k, v in self.feats.items()}
        else:
            self.feats = {"val": chunked(lambda x: self.through(x, depth), data.x_val)}
            if not data.augment:
                self.feats["train"] = chunked(lambda x: self.through(x, depth), data.x_train)
        self.depth = depth

    @property
    def val(self) -> torch.Tensor:
        return self.feats["val"]

    @torch.no_grad()
    def batch(self, data: Data, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Frozen features of the training rows `idx` (cached, or of this batch's augmented images)."""
        if "train" in self.feats:  # index_select copies whole rows: 2-6 % faster mf epochs than [idx]
            return self.feats["train"].index_select(0, idx)
        return self.through(train_batch(data, idx, gen), self.depth)

    def train_split(self, data: Data, gen: torch.Generator) -> torch.Tensor:
        """Frozen features of the whole training split (cached, or of one augmented view of it)."""
        if "train" in self.feats:
            return self.feats["train"]
        return chunked(lambda x: self.through(x, self.depth),
                       train_batch(data, torch.arange(len(data.y_train), device=data.y_train.device), gen))

    def clear(self) -> None:
        self.depth, self.feats = None, {}


def batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """Shuffled index batches over range(n); the last partial batch is kept."""
    perm = torch.randperm(n, generator=gen, device=gen.device).to(device)
    yield from perm.split(batch_size)


def minibatch_epoch(opt: torch.optim.Optimizer, loss_fn: Callable[[torch.Tensor], torch.Tensor], n: int,
                    batch_size: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """One shuffled pass over range(n): per index batch, `loss_fn(idx)` gives the loss (a loss
    without a graph means loss_fn set the gradients itself), then one optimiser step. Returns the
    mean loss as a 0-d device tensor: no host synchronisation inside the loop."""
    total, steps = torch.zeros((), device=device), 0
    for idx in batches(n, batch_size, gen, device):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(idx)
        if loss.requires_grad:
            loss.backward()
        opt.step()
        total += loss.detach()
        steps += 1
    return total / steps


def train_batch(data: Data, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Training images at `idx`, augmented (random crop and flip) where the data set asks for it."""
    x = data.x_train[idx]
    return augment_batch(x, gen) if data.augment else x


@torch.no_grad()
def chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int = 8192) -> torch.Tensor:
    """fn applied to x in chunks of `size` rows (bounds memory of evaluation passes)."""
    return torch.cat([fn(c) for c in x.split(size)])


def accuracy(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of rows whose argmax equals y."""
    return 100.0 * (scores.argmax(1) == y).float().mean().item()


def scores_metrics(scores: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """{"acc", "loss"} of logits `scores` against labels."""
    return {"acc": accuracy(scores, y), "loss": torch.nn.functional.cross_entropy(scores, y).item()}


def eager(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """`cls` (a torch.optim optimiser) with its methods unwrapped from torch._dynamo's decorators.
    Outside torch.compile those decorators do nothing, but the first call imports torch._dynamo:
    about 1.8 s of every job's start-up on a CPU, more than importing torch. The methods that run
    are torch's own (`inspect.unwrap`), so the update is the same kernel with the same arguments;
    the step runs under no_grad, as torch's wrapper runs it."""
    ns = {name: inspect.unwrap(getattr(cls, name))
          for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict")}
    ns["step"] = torch.no_grad()(inspect.unwrap(cls.step))
    return type(cls.__name__, (cls,), {**ns, "__doc__": eager.__doc__, "__module__": __name__})


Adam, AdamW, SGD = eager(torch.optim.Adam), eager(torch.optim.AdamW), eager(torch.optim.SGD)


def adam(params, lr: float, *, weight_decay: float | None = None, l2: float | None = None) -> torch.optim.Optimizer:
    """AdamW with decoupled `weight_decay`, or Adam with an `l2` penalty (exactly one of the two:
    the names mean the same in every algorithm, see bpfree.hparams), with the fused kernel: on a
    CPU the unfused update costs as much as the layer's matmuls at batch 128. Without
    torch._dynamo's import (see `eager`)."""
    if (weight_decay is None) == (l2 is None):
        raise TypeError("adam: give exactly one of weight_decay (AdamW) and l2 (Adam)")
    if weight_decay is not None:
        return AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return Adam(params, lr=lr, weight_decay=l2, fused=True)


def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
