"""Metered final runs alone on their host (CPU runs) or device (GPU runs).

RAPL counts a whole CPU package and NVML a whole GPU, so a final run whose figures matter
(`protocol.metering.alone: true`) must not share its host or device with another metered final run
or a search worker. Each of them holds a reader-writer lock, one file per host and device key, for
as long as it runs: a final run with `alone` holds it exclusively (flock LOCK_EX), every other final
run and every search worker holds it shared (LOCK_SH). An alone run therefore waits until no other
holder is left, and nothing else starts on its host or device until it ends; runs without `alone`
may share with each other. This holds under any scheduler, or none.

Writers go first: a process takes `<lock>.gate` exclusively before it asks for the lock, and a
writer keeps the gate until it holds the lock, so search workers that start while an alone run
waits queue behind it instead of starving it. The kernel drops every lock when its process ends,
however it ends (SIGKILL included): a crash never leaves a host reserved.

The lock files live on the local disk, one folder for every workflow of the user on this host (two
workflows run side by side keep apart too): /tmp/bpfree-metered-locks-<uid>, or
$BPFREE_METERED_LOCK_DIR (it must be a folder every job of the host sees and that supports flock;
a SLURM job with a private /tmp sees only its own: see docs/cluster.md). A process that has to wait
prints one line naming what it waits for (the holders' labels, from their `.holder` notes).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bpfree import io
from bpfree.errors import FileError


def lock_dir() -> Path:
    return Path(os.environ.get("BPFREE_METERED_LOCK_DIR") or f"/tmp/bpfree-metered-locks-{os.getuid()}")


def device_key(device: Any) -> str:
    """`cpu` for a CPU run (RAPL and the CPU estimate are per host); for a CUDA device, its UUID
    where torch gives one, else its entry of CUDA_VISIBLE_DEVICES (or its index): `gpu<id>`."""
    if getattr(device, "type", str(device)) != "cuda":
        return "cpu"
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    ident = str(uuid) if uuid else visible[index] if index < len(visible) else str(index)
    return "gpu" + re.sub(r"[^A-Za-z0-9_-]", "", ident)


class Hold:
    """The lock of `key` on this host, held for a `with` block: exclusively (an alone final run) or
    shared (any other final run or search worker). `label` names the holder in the wait lines of
    others. After entering, `waited_s` is how long it waited; `record()` is what metrics.json keeps."""

    def __init__(self, key: str, exclusive: bool, label: str, folder: str | Path | None = None):
        self.key, self.exclusive, self.label = key, exclusive, label
        self.folder = Path(folder) if folder is not None else lock_dir()
        self.name = f"{socket.gethostname()}-{key}"
        self.waited_s: float | None = None
        self._fd: int | None = None
        self._note = self.folder / f"{self.name}.{os.getpid()}-{time.time_ns()}.holder"  # who holds it, for waiters

    def __enter__(self) -> Hold:
        """Wait for the lock and take it. FileError naming the folder where it cannot be made or
        locked (no permission; a file system without flock)."""
        t0, told = time.monotonic(), False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            gate = self._open("gate")
            try:
                told = self._take(gate, fcntl.LOCK_EX, told)
                self._fd = self._open("lock")
                told = self._take(self._fd, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH, told)
            finally:
                os.close(gate)  # releases the gate: the next writer may queue
        except OSError as e:
            raise FileError(f"cannot lock in {self.folder} (the metered runs' lock folder, "
                            f"$BPFREE_METERED_LOCK_DIR): {e.strerror or e}; give a local folder that supports flock"
                            ) from None
        self.waited_s = time.monotonic() - t0
        try:  # a note for the wait lines of others, nothing more: a full disk must not stop the run for it
            io.write_json(self._note, {"label": self.label, "pid": os.getpid(), "exclusive": self.exclusive})
        except (OSError, FileError):
            pass
        return self

    def __exit__(self, *exc) -> None:
        self._note.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self) -> dict:
        """`metered_alone` (held exclusively) and `alone_wait_s` (seconds waited for the lock)."""
        return {"metered_alone": self.exclusive, "alone_wait_s": self.waited_s}

    def _open(self, suffix: str) -> int:
        return os.open(self.folder / f"{self.name}.{suffix}", os.O_RDWR | os.O_CREAT, 0o666)

    def _take(self, fd: int, mode: int, told: bool) -> bool:
        """Lock `fd` in `mode`, blocking; the first time it must wait, say for what. Returns whether
        the wait line was printed."""
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return told
        except BlockingIOError:
            pass
        if not told:
            what = "alone" if self.exclusive else "beside other runs"
            print(f"bpfree: {self.label} waits to run {what} on {self.name}: held by "
                  f"{', '.join(self.holders()) or 'a run about to start'} (locks in {self.folder})",
                  file=sys.stderr, flush=True)
        fcntl.flock(fd, mode)
        return True

    def holders(self) -> list[str]:
        """The labels of the live processes of this host that hold (or last held) this lock."""
        out = []
        for f in sorted(self.folder.glob(f"{self.name}.*.holder")):
            try:
                note = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            pid = int(note.get("pid") or 0)
            if f != self._note and pid > 0 and io.alive(pid):
                out.append(f"{note.get('label')} (pid {pid}{', alone' if note.get('exclusive') else ''})")
        return out
