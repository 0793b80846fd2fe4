"""The training engine: drives any algorithm through its stages under the protocol's stopping rule."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from bpfree.algorithms.base import MONITORS, Algorithm, Stage, accuracy, generator
from bpfree.checkpoint import Checkpoint, algo_state, load_algo_state, load_rng_state, rng_state
from bpfree.data import Data
from bpfree.device import sync
from bpfree.errors import BpfreeError


class Diverged(BpfreeError, RuntimeError):
    """The training loss diverged (the message names the stage, the epoch and how)."""


LOSS_BLOWUP = 100.0  # a final run's training loss this many times its stage's first epoch's: diverged


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
    capped_stages: int = 0  # stages under the stopping rule that the epoch cap ended before patience ran out
    stage_cpu_s: dict = field(default_factory=dict)  # process CPU seconds (user + system) per stage
    diverged: list = field(default_factory=list)  # final runs: where and how each stage that diverged did


class EarlyStopping:
    """The stopping state of one stage: the best monitored value and the epochs since it improved
    (the protocol's rule), and the weights of the best epoch by the stage's `restore` quantity.
    A stage with a fixed number of epochs only counts to its cap. Saves and restores itself with
    the checkpoint (`state_dict`, `load_state_dict`)."""

    def __init__(self, stage: Stage, stopping: Stopping):
        self.stage, self.stopping = stage, stopping
        self.best: float | None = None  # best monitored value
        self.kept: float | None = None  # best value of the restore quantity, and its weights
        self.best_state: dict | None = None
        self.best_epoch = 0  # run-wide epoch number of best_state (0: none kept)
        self.bad = 0  # epochs without improvement of the monitor
        self.done = False

    def update(self, val: dict[str, float], algo: Algorithm, epoch: int, last: bool) -> bool:
        """Record the validation metrics of run-wide epoch `epoch` (`last`: the stage's cap);
        True when the stage stops after it."""
        self.done = last
        if self.stage.epochs is None:
            monitor, keep = self.stage.monitor, self.stage.keep
            if _improved(val[monitor], self.best, monitor, self.stopping.min_delta):
                self.best, self.bad = val[monitor], 0
            else:
                self.bad += 1
                self.done = self.done or self.bad >= self.stopping.patience
            if _improved(val[keep], self.kept, keep, 0.0):
                self.kept, self.best_state, self.best_epoch = val[keep], algo.state_dict(), epoch
        return self.done

    def restore(self, algo: Algorithm) -> None:
        """Load the kept weights into `algo` (if any: a fixed-epoch stage keeps its last)."""
        if self.best_state is not None:
            algo.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("best", "kept", "best_state", "best_epoch", "bad", "done")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def _improved(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if MONITORS[monitor] > 0 else value < best - min_delta


def fit(algo: Algorithm, data: Data, stopping: Stopping, seed: int,
        on_epoch: Callable[[dict], None] | None = None, checkpoint: Checkpoint | None = None,
        on_divergence: str = "raise", diagnostics: Callable | None = None) -> FitResult:
    """Train `algo` on `data`. `on_epoch(record)` is called after every epoch (progress, metering,
    pruning: it may raise to stop). A stage stops when its `monitor` has not improved by
    `min_delta` for `patience` epochs, and ends with the checkpoint that was best by its `restore`
    quantity (default: the monitor) restored.
    `on_divergence` (see `_diverged`): "raise" (searches) raises Diverged; "stop" (final runs)
    ends a diverged stage as patience would, its best weights restored, and goes on. `diagnostics`:
    a context manager factory around `epoch_metrics` (the meter's: not the algorithm's cost).
    `checkpoint` (bpfree.checkpoint): resume from its saved state if it holds one, save after
    epochs (see Checkpoint.every_s); the caller deletes it once the results are written."""
    if on_divergence not in ("raise", "stop"):
        raise ValueError(f"on_divergence must be 'raise' or 'stop', not {on_divergence!r}")
    gen = generator(algo.device, seed)
    n_seen = len(data.y_train) + len(data.y_val)
    resume = checkpoint.load() if checkpoint is not None else None
    res = FitResult(**resume["result"]) if resume is not None else FitResult()
    if resume is not None:
        load_algo_state(algo, resume["algo"], partial=True)  # weights first: replayed end_stage calls use them
    for si, stage in enumerate(algo.stages()):
        cap = stage.epochs or stopping.max_epochs
        cpu0 = time.process_time()  # the stage's CPU time: set-up, epochs, bookkeeping and end_stage
        algo.begin_stage(stage, data, cap)
        early, first, diverged = EarlyStopping(stage, stopping), 1, False
        if resume is not None and si < resume["stage"]:  # finished before the kill: replay its side effects
            algo.end_stage(stage, data)
            continue
        if resume is not None:  # the stage the run was in when it was killed
            load_algo_state(algo, resume["algo"])
            load_rng_state(gen, resume["rng"])
            early.load_state_dict(resume["early"])
            first, resume = resume["stage_epoch"] + 1, None
        else:
            res.macs += algo.cost(stage).once * n_seen
        for epoch in range(first, cap + 1):
            if early.done:
                break
            record, val = _epoch(algo, stage, epoch, data, gen, res, diagnostics)
            _add_cpu(res, stage.name, time.process_time() - cpu0)
            cpu0 = time.process_time()
            if not (diverged := _diverged(record, res, early, on_divergence)):
                early.update(val, algo, res.epochs, last=epoch == cap)
                record["since_best"] = early.bad if stage.epochs is None else None
            if on_epoch is not None:
                on_epoch(record)
            if diverged:
                break
            if checkpoint is not None and checkpoint.due():
                checkpoint.save({"stage": si, "stage_epoch": epoch, "result": asdict(res), "algo": algo_state(algo),
                                 "rng": rng_state(gen), "early": early.state_dict()})
        early.restore(algo)
        res.best_epoch = early.best_epoch or res.epochs
        res.capped_stages += stage.epochs is None and early.bad < stopping.patience and not diverged
        algo.end_stage(stage, data)
        _add_cpu(res, stage.name, time.process_time() - cpu0)
    res.val_acc = accuracy(algo.predict(data.x_val), data.y_val)
    return res


def _diverged(record: dict, res: FitResult, early: EarlyStopping, on_divergence: str) -> bool:
    """Whether the epoch of `record` diverged (fit's `on_divergence`): a NaN or infinite training
    loss, or under "stop" one above LOSS_BLOWUP times its stage's first epoch's. Under "stop" the
    reason goes to `res.diverged` (docs/protocol.md, "Final runs"); Diverged is raised under "raise",
    or where the stage kept no epoch to restore (its first epoch, or a fixed-epoch stage)."""
    loss, where = record["train_loss"], f"in stage {record['stage']}, epoch {record['stage_epoch']}"
    first = next(r["train_loss"] for r in res.history if r["stage"] == record["stage"])
    if not math.isfinite(loss):
        why = f"training loss is {loss} {where}"
    elif on_divergence == "stop" and first > 0 and loss > LOSS_BLOWUP * first:
        why = f"training loss rose from {first:.3g} (the stage's first epoch) to {loss:.3g} {where}"
    else:
        return False
    if on_divergence == "raise" or early.best_state is None:
        raise Diverged(why + ("" if on_divergence == "raise" else "; the stage kept no earlier epoch"))
    res.diverged.append(why)
    return True


def _add_cpu(res: FitResult, stage: str, seconds: float) -> None:
    res.stage_cpu_s[stage] = res.stage_cpu_s.get(stage, 0.0) + seconds


def _epoch(algo: Algorithm, stage: Stage, stage_epoch: int, data: Data, gen: torch.Generator,
           res: FitResult, diagnostics: Callable | None = None) -> tuple[dict, dict[str, float]]:
    """Train and validate one epoch, count it in `res` and append its epochs.csv record (validation
    quantity k as `val_k`, then the algorithm's `epoch_metrics`). Returns the record and the
    validation metrics."""
    t0, c0 = time.perf_counter(), time.process_time()
    loss = algo.train_epoch(stage, data, gen)
    val = algo.validate(stage, data)
    loss = float(loss)
    sync(algo.device)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    cost = algo.cost(stage)
    res.epochs += 1
    res.macs += cost.train * len(data.y_train) + cost.eval * len(data.y_val)
    record = {"epoch": res.epochs, "stage": stage.name, "stage_epoch": stage_epoch, "train_loss": loss,
              "val_acc": val["acc"], "val_loss": val["loss"],
              **{f"val_{k}": v for k, v in val.items() if k not in MONITORS}, "seconds": seconds,
              "cpu_s": cpu, "load_1m": os.getloadavg()[0],
              "since_best": None}  # epochs since the monitor improved (fit sets it; None: a fixed-epoch stage)
    extra = {}
    if math.isfinite(loss) and type(algo).epoch_metrics is not Algorithm.epoch_metrics:
        c1 = time.process_time()
        with diagnostics() if diagnostics is not None else nullcontext():
            extra = algo.epoch_metrics(stage, data)
        _add_cpu(res, stage.name, c1 - time.process_time())  # diagnostics: not the stage's training CPU time
    if clash := sorted(set(extra) & set(record)):
        raise ValueError(f"{type(algo).__name__}.epoch_metrics: {', '.join(clash)} would overwrite the engine's "
                         "columns")
    record.update(extra)
    res.history.append(record)
    return record, val
