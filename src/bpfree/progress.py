"""Line-oriented progress for long stages: one line per epoch or trial, flushed, readable in
Snakemake's per-job logs (no carriage returns, no terminal control codes)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, stream=None):
        self.label, self.stream, self.t0 = label, stream or sys.stderr, time.perf_counter()

    def __call__(self, msg: str) -> None:
        elapsed = time.perf_counter() - self.t0
        print(f"[{self.label} {elapsed:7.1f}s] {msg}", file=self.stream, flush=True)

    def epoch(self, rec: dict, cap: int | None = None) -> None:
        of = f"/{cap}" if cap else ""
        self(f"{rec['stage']:>8} epoch {rec['stage_epoch']:>3}{of}  loss {rec['train_loss']:.4f}  "
             f"val_acc {rec['val_acc']:6.2f}%  val_loss {rec['val_loss']:.4f}  {rec['seconds']:.2f}s")
