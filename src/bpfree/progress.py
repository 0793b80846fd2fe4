"""Line-oriented progress for long stages: one line per epoch or trial, flushed, readable in
Snakemake's per-job logs (no carriage returns, no terminal control codes)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, stream=None):
        self.label, self.stream, self.t0 = label, stream or sys.stderr, time.perf_counter()
        self._stage: dict[str, list[float]] = {}  # seconds of each epoch so far, per stage

    def __call__(self, msg: str) -> None:
        elapsed = time.perf_counter() - self.t0
        print(f"[{self.label} {elapsed:7.1f}s] {msg}", file=self.stream, flush=True)

    def epoch(self, rec: dict, cap: int | None = None, patience: int | None = None) -> None:
        """One epoch's line: its stage, number (of the stage's `cap`), losses and accuracy, time; and
        what is left: epochs since the best (of `patience`, when the stage stops early), and the
        time to the cap, and to a stop if no later epoch improves, at the stage's mean epoch time."""
        of = f"/{cap}" if cap else ""
        line = (f"{rec['stage']:>8} epoch {rec['stage_epoch']:>3}{of}  loss {rec['train_loss']:.4f}  "
                f"val_acc {rec['val_acc']:6.2f}%  val_loss {rec['val_loss']:.4f}  {rec['seconds']:.2f}s")
        stage = self._stage.setdefault(rec["stage"], [])
        stage.append(rec["seconds"])
        if cap:
            per_epoch, left = sum(stage) / len(stage), cap - rec["stage_epoch"]
            since = rec.get("since_best")
            if patience and since is not None:
                stop = min(left, patience - since)
                line += f"  best {since} ago (patience {patience}): stops in {stop} ({duration(stop * per_epoch)})"
                line += f" without a gain, at most {left} ({duration(left * per_epoch)})" if stop < left else ""
            else:
                line += f"  {left} left ({duration(left * per_epoch)})"
        self(line)


def duration(seconds: float) -> str:
    """A duration as a person reads it: 45 s, 12 min, 2.3 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
