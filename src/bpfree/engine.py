"""The training engine: drives any algorithm through its stages under the protocol's stopping rule."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from bpfree.algorithms.base import Algorithm, accuracy, generator
from bpfree.checkpoint import Checkpoint, algo_state, load_algo_state, load_rng_state, rng_state
from bpfree.data import Data
from bpfree.errors import BpfreeError


class Diverged(BpfreeError, RuntimeError):
    """The training loss became NaN or infinite (the message names the stage and the epoch)."""


@dataclass(frozen=True)
class Stopping:
    """The one stopping rule of a comparison: stop a stage after `patience` epochs without an
    improvement larger than `min_delta` of its monitored validation quantity, or at `max_epochs`."""

    max_epochs: int
    patience: int
    min_delta: float = 0.0


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    val_acc: float = float("nan")
    best_epoch: int = 0
    epochs: int = 0
    macs: int = 0  # analytic multiply-adds of the whole training phase


def _improved(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if monitor == "acc" else value < best - min_delta


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit(algo: Algorithm, data: Data, stopping: Stopping, seed: int,
        on_epoch: Callable[[dict], None] | None = None, checkpoint: Checkpoint | None = None) -> FitResult:
    """Train `algo` on `data`. `on_epoch(record)` is called after every epoch (progress, metering,
    pruning: it may raise to stop). A stage stops when its `monitor` has not improved by
    `min_delta` for `patience` epochs, and ends with the checkpoint that was best by its `restore`
    quantity (default: the monitor) restored.
    `checkpoint` (bpfree.checkpoint): resume from its saved state if it holds one, save after
    epochs (see Checkpoint.every_s); the caller deletes it once the results are written."""
    gen = generator(algo.device, seed)
    res = FitResult()
    n_train, n_val = len(data.y_train), len(data.y_val)
    resume = checkpoint.load() if checkpoint is not None else None
    if resume is not None:
        res = FitResult(**resume["result"])
        load_algo_state(algo, resume["algo"], partial=True)  # weights first: replayed end_stage calls use them
    for si, stage in enumerate(algo.stages()):
        cap = stage.epochs or stopping.max_epochs
        algo.begin_stage(stage, data, cap)
        if resume is not None and si < resume["stage"]:  # finished before the kill: replay its side effects
            algo.end_stage(stage, data)
            continue
        cost = algo.cost(stage)
        first = 1
        if resume is not None:  # the stage the run was in when it was killed
            load_algo_state(algo, resume["algo"])
            load_rng_state(gen, resume["rng"])
            best, kept, best_state, best_epoch, bad = (
                resume["early"][k] for k in ("best", "kept", "best_state", "best_epoch", "bad"))
            first = cap + 1 if resume["early"]["done"] else resume["stage_epoch"] + 1
            resume = None
        else:
            res.macs += cost.once * (n_train + n_val)
            best, kept, best_state, best_epoch, bad = None, None, None, 0, 0
        keep = stage.restore or stage.monitor
        for epoch in range(first, cap + 1):
            t0 = time.perf_counter()
            loss = algo.train_epoch(stage, data, gen)
            val = algo.validate(stage, data)
            loss = float(loss)
            sync(algo.device)
            seconds = time.perf_counter() - t0
            res.epochs += 1
            res.macs += cost.train * n_train + cost.eval * n_val
            if not math.isfinite(loss):
                raise Diverged(f"training loss is {loss} in stage {stage.name}, epoch {epoch}")
            record = {"epoch": res.epochs, "stage": stage.name, "stage_epoch": epoch, "train_loss": loss,
                      "val_acc": val["acc"], "val_loss": val["loss"], "seconds": seconds}
            res.history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            done = epoch == cap
            if stage.epochs is None:
                if _improved(val[stage.monitor], best, stage.monitor, stopping.min_delta):
                    best, bad = val[stage.monitor], 0
                else:
                    bad += 1
                    done = done or bad >= stopping.patience
                if _improved(val[keep], kept, keep, 0.0):
                    kept, best_state, best_epoch = val[keep], algo.state_dict(), res.epochs
            if checkpoint is not None and checkpoint.due():
                checkpoint.save({
                    "stage": si, "stage_epoch": epoch, "result": asdict(res), "algo": algo_state(algo),
                    "rng": rng_state(gen), "early": {"best": best, "kept": kept, "best_state": best_state,
                                                     "best_epoch": best_epoch, "bad": bad, "done": done}})
            if done:
                break
        if best_state is not None:
            algo.load_state_dict(best_state)
        res.best_epoch = best_epoch or res.epochs
        algo.end_stage(stage, data)
    res.val_acc = accuracy(algo.predict(data.x_val), data.y_val)
    return res
