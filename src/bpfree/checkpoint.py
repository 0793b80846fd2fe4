"""Per-epoch training checkpoints, so that a killed final run resumes from its last finished epoch.

The engine (`bpfree.engine.fit(..., checkpoint=...)`) saves, after an epoch: the algorithm's state
(every attribute with a `state_dict`: the network, optimisers, schedulers, scalers), the RNG
states (the engine's batch generator, torch's CPU and CUDA generators), the stage and epoch, the
early-stopping state (`bpfree.engine.EarlyStopping.state_dict`: best value, best weights, epochs
without improvement, whether the stage has stopped) and the history so far. A resumed run
therefore continues the same trajectory: on a deterministic device it ends bit-identical to an
uninterrupted one.

An algorithm whose state between epochs lives elsewhere (plain tensors, Python objects) defines
`checkpoint_state() -> dict` and `load_checkpoint_state(dict)`; state that `begin_stage` and
`end_stage` rebuild from the weights (cached features of frozen layers, `base.FrozenFeatures`)
needs nothing: on resume the engine replays them for the finished stages.

A checkpoint carries a key (`bpfree.sources.digest` of everything that decides the run); a file with another key is
ignored, so a changed config or source never resumes a stale run. Files are written to a
temporary name, flushed to disk, then renamed: a kill during the save leaves the previous one.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from bpfree import io

FORMAT = 1


def _stateful(algo: Any) -> dict[str, Any]:
    """Attributes of `algo` (or items of list/tuple/dict attributes) with a state_dict."""
    out: dict[str, Any] = {}
    for name, v in vars(algo).items():
        items = (v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, (list, tuple))
                 else [(None, v)])
        for k, obj in items:
            if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)) \
                    and not isinstance(obj, type):
                out[name if k is None else f"{name}[{k}]"] = obj
    return out


def algo_state(algo: Any) -> dict:
    if hasattr(algo, "checkpoint_state"):
        return {"custom": algo.checkpoint_state()}
    return {"objects": {k: o.state_dict() for k, o in _stateful(algo).items()}}


def load_algo_state(algo: Any, state: dict, partial: bool = False) -> None:
    """Restore `algo_state`. `partial`: only the objects the algorithm has now (before its stage
    began, optimisers created by begin_stage do not exist yet)."""
    if "custom" in state:
        if not partial:
            algo.load_checkpoint_state(state["custom"])
        return
    objs = _stateful(algo)
    missing = sorted(set(state["objects"]) - set(objs))
    if missing and not partial:
        raise RuntimeError(f"checkpoint holds state for {missing}, which the algorithm does not have")
    for k, sd in state["objects"].items():
        if k in objs:
            objs[k].load_state_dict(sd)


def rng_state(gen: torch.Generator) -> dict:
    out = {"gen": gen.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def load_rng_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(state["gen"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoint:
    """One run's checkpoint file. `every_s`: save at most once per this many seconds (0: every
    epoch); the save time is inside the measured training window, so long runs (epochs longer
    than `every_s`) save every epoch and short ones bound the overhead. `extra` is a dict the
    caller may fill (e.g. energy measured so far); it is saved and restored with the state."""

    def __init__(self, path: str | Path, run_key: str, every_s: float = 0.0, log=None):
        self.path, self.key, self.every_s, self.log = Path(path), run_key, every_s, log
        self.extra: dict = {}
        self.seconds = 0.0  # time spent saving
        self.saves = 0
        self.resumed_from: dict | None = None  # {"epoch", "stage"} of the loaded checkpoint
        self._last = time.monotonic()
        self._loaded, self._state = False, None

    def load(self) -> dict | None:
        """The saved state, or None (no file, another run's file, or an unreadable one). Read once:
        later calls return the same state."""
        if self._loaded:
            return self._state
        self._loaded = True
        self._state = self._read()
        return self._state

    def _read(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated file cannot come from our atomic save, but be safe
            self._say(f"ignoring unreadable checkpoint {self.path}: {e}")
            return None
        if state.get("format") != FORMAT or state.get("key") != self.key:
            self._say(f"ignoring checkpoint {self.path}: it belongs to another configuration or code version")
            return None
        self.extra = state.get("extra", {})
        self.resumed_from = {"epoch": state["result"]["epochs"], "stage": state["stage"]}
        self._say(f"resuming from checkpoint {self.path} (epoch {state['result']['epochs']})")
        return state

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def save(self, state: dict) -> None:
        t0 = time.perf_counter()
        with io.atomic(self.path) as tmp, open(tmp, "wb") as f:
            torch.save({**state, "format": FORMAT, "key": self.key, "extra": self.extra}, f)
            f.flush()
            os.fsync(f.fileno())
        self._last = time.monotonic()
        self.seconds += time.perf_counter() - t0
        self.saves += 1

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def _say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)
