"""Which metered runs shared a host: each final run leaves a record (its label, host, process, start
and end) in one folder the workflow gives (`bpfree train --overlap-dir`), and reads the others'
when it ends. RAPL counts a whole socket and NVML a whole device, and the wall time of a run
slows when a neighbour takes a core, so a run whose window overlapped another's on the same host
records which (`metrics.json`: `overlapped_with`) and the report flags its cell.

A record without an end whose process is gone (a killed run) counts until its file was last
written, so that a crash does not mark every later run as overlapped.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from bpfree import io


class Window:
    """One run's record in `folder`: written when the window opens (`open`), completed when it
    closes (`close`, which returns the labels of the other runs on this host that overlapped it).
    As a context manager (`folder` None: nothing is tracked), the labels end in `overlapped`."""

    def __init__(self, folder: str | Path | None, label: str):
        self.folder, self.label = (None if folder is None else Path(folder)), label
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.path = None if folder is None else self.folder / f"{self.host}-{self.pid}-{time.time_ns()}.json"
        self.start: float | None = None
        self.overlapped: list[str] | None = None  # None: not tracked

    def __enter__(self) -> Window:
        if self.folder is not None:
            self.open()
        return self

    def __exit__(self, *exc) -> None:
        if self.folder is not None:
            self.overlapped = self.close()

    def record(self) -> dict:
        """What metrics.json keeps: the overlapping runs and their number (None: not tracked)."""
        return {"overlapped_with": self.overlapped,
                "overlaps": None if self.overlapped is None else len(self.overlapped)}

    def open(self) -> None:
        self.start = time.time()
        self._write(end=None)

    def close(self) -> list[str]:
        end = time.time()
        self._write(end=end)
        return sorted(r["label"] for r in _records(self.folder, exclude=self.path)
                      if r["host"] == self.host and r["start"] < end and r["end"] > self.start)

    def _write(self, end: float | None) -> None:
        io.write_json(self.path, {"label": self.label, "host": self.host, "pid": self.pid, "start": self.start,
                                  "end": end})


def _records(folder: Path, exclude: Path) -> list[dict]:
    out = []
    for f in folder.glob("*.json"):
        if f == exclude:
            continue
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):  # being written, or cut off by a kill: not a window we can place
            continue
        if r.get("end") is None:
            alive = r.get("host") != socket.gethostname() or io.alive(int(r.get("pid", 0)))
            r["end"] = time.time() if alive else f.stat().st_mtime
        out.append(r)
    return out
