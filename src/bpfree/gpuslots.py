"""One GPU per job on a multi-GPU workstation.

Snakemake's `resources: gpu=N` only counts jobs; it never sets CUDA_VISIBLE_DEVICES, so every job
would use GPU 0. `pin()` (called by `bpfree search` and `bpfree train` before CUDA starts) takes
the first free GPU: it holds an exclusive `flock` on `<lock dir>/gpu<i>.lock` for the life of the
process and sets CUDA_VISIBLE_DEVICES=i. The kernel drops the lock when the process ends, however
it ends (SIGKILL included), so a killed job never leaves a GPU reserved. With more jobs than GPUs
a job waits for a free one.

It does nothing when CUDA_VISIBLE_DEVICES is already set (SLURM sets it for `--gpus` jobs), when
the job runs on the CPU or on an explicit `cuda:N`, when fewer than two GPUs are visible (unless
BPFREE_GPUS lists them), or when BPFREE_GPU_PIN=0.

Environment: BPFREE_GPUS     devices to share out, e.g. "0,1,3" (default: every GPU NVML lists)
             BPFREE_GPU_LOCK_DIR  where the lock files live (default /tmp/bpfree-gpu-locks-<uid>;
                              must be on the local machine, shared by all its jobs)
             BPFREE_GPU_PIN  0 turns pinning off
"""
from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

_held: list[int] = []  # lock file descriptors, kept open until the process exits


def lock_dir() -> Path:
    return Path(os.environ.get("BPFREE_GPU_LOCK_DIR") or f"/tmp/bpfree-gpu-locks-{os.getuid()}")


def gpus() -> list[str]:
    """Indices of the GPUs to share out (without initialising CUDA in this process)."""
    listed = os.environ.get("BPFREE_GPUS", "").strip()
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()]
    from bpfree.device import gpu_count

    return [str(i) for i in range(gpu_count())]


def try_lock(gpu: str) -> int | None:
    """An open descriptor holding the lock of `gpu`, or None if another process holds it."""
    d = lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / f"gpu{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # for a human looking at who holds it
    return fd


def pin(device: str = "auto", poll_s: float = 2.0) -> str | None:
    """Take a free GPU for this process and set CUDA_VISIBLE_DEVICES; the GPU index, or None when
    pinning does not apply (see the module docstring). Blocks while every GPU is taken."""
    if os.environ.get("BPFREE_GPU_PIN", "1") == "0" or "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    if device not in ("auto", "cuda"):
        return None
    devices = gpus()
    if len(devices) < 2 and not os.environ.get("BPFREE_GPUS"):
        return None
    waited = False
    while True:
        for g in devices:
            fd = try_lock(g)
            if fd is not None:
                _held.append(fd)
                os.environ["CUDA_VISIBLE_DEVICES"] = g
                return g
        if not waited:
            print(f"bpfree: all GPUs {','.join(devices)} are taken (locks in {lock_dir()}); waiting",
                  file=sys.stderr, flush=True)
            waited = True
        time.sleep(poll_s)
