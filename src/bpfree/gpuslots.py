"""GPUs shared out among the jobs of a multi-GPU workstation: one final run per device, search
workers packed several to a device.

Snakemake's `resources: gpu=N` only counts; it never sets CUDA_VISIBLE_DEVICES, so every job
would use GPU 0. `pin()` (called by `bpfree search` and `bpfree train` before CUDA starts) takes
slots of a device and sets CUDA_VISIBLE_DEVICES to it. Each device has BPFREE_GPU_SLOTS slots
(default 1), one lock file each, `<lock dir>/gpu<i>.slot<k>.lock`, held with an exclusive `flock`
for the life of the process. A search worker takes one slot, on the device with the most slots
already taken that still has one free (searches pack, leaving whole devices free for final runs);
a final run (`whole`) takes every slot of one device, so it never shares its GPU. The kernel drops
the locks when the process ends, however it ends (SIGKILL included), so a killed job never leaves a
GPU reserved. With every slot taken a job waits for one to free up.

It does nothing when CUDA_VISIBLE_DEVICES is already set (SLURM sets it for `--gpus` jobs), when
the job runs on the CPU or on an explicit `cuda:N`, when fewer than two GPUs are visible and one
slot each (unless BPFREE_GPUS lists them), or when BPFREE_GPU_PIN=0.

Environment: BPFREE_GPUS     devices to share out, e.g. "0,1,3" (default: every GPU NVML lists)
             BPFREE_GPU_SLOTS  search workers per device (default 1); profiles/workstation-gpu reads
                              it too, so that Snakemake counts slots (a final run counts all of a device's)
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

from bpfree.errors import ConfigError

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


def slots() -> int:
    """Slots per device, BPFREE_GPU_SLOTS (default 1); ConfigError naming it unless a whole number >= 1."""
    text = os.environ.get("BPFREE_GPU_SLOTS", "1").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"BPFREE_GPU_SLOTS = {text!r}: give the number of search workers per GPU, a whole "
                          "number >= 1")
    return int(text)


def profile_counts() -> tuple[int, int]:
    """(GPUs, slots per GPU) for profiles/workstation-gpu, so that Snakemake counts what `pin`
    shares out: the devices of BPFREE_GPUS (else every GPU NVML lists) and BPFREE_GPU_SLOTS. With a
    bad slot count or no GPU it prints one line naming the variable and exits with status 2."""
    try:
        n, devices = slots(), gpus()
        if not devices:
            raise ConfigError("profiles/workstation-gpu: NVML lists no GPU here; set BPFREE_GPUS to the devices "
                              "to use (e.g. BPFREE_GPUS=0,1), or run with the default profile")
    except ConfigError as e:
        sys.stderr.write(f"bpfree: {e}\n")
        raise SystemExit(2) from None
    return len(devices), n


def try_lock(gpu: str, slot: int = 0) -> int | None:
    """An open descriptor holding slot `slot` of `gpu`, or None if another process holds it."""
    d = lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / f"gpu{gpu}.slot{slot}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # for a human looking at who holds it
    return fd


def taken(gpu: str, n: int) -> int:
    """How many of the `n` slots of `gpu` other processes hold now (each probed and released)."""
    count = 0
    for k in range(n):
        fd = try_lock(gpu, k)
        if fd is None:
            count += 1
        else:
            os.close(fd)
    return count


def take(devices: list[str], n: int, whole: bool) -> tuple[str, list[int]] | None:
    """One free slot (packed: on the busiest device that has one) or, `whole`, all `n` slots of one
    device (the idlest first): (device, descriptors), or None when none is free now."""
    busy = {g: taken(g, n) for g in devices}
    order = sorted(devices, key=lambda g: busy[g], reverse=not whole)
    for g in order:
        if busy[g] == n or (whole and busy[g]):
            continue
        fds = []
        for k in range(n):
            fd = try_lock(g, k)
            if fd is not None:
                fds.append(fd)
                if not whole:
                    return g, fds
            elif whole:
                break
        if whole and len(fds) == n:
            return g, fds
        for fd in fds:  # another process took a slot meanwhile: let go and try the next device
            os.close(fd)
    return None


def pin(device: str = "auto", poll_s: float = 2.0, whole: bool = False) -> str | None:
    """Take a slot of a GPU (or a `whole` GPU) for this process and set CUDA_VISIBLE_DEVICES; the
    GPU index, or None when pinning does not apply (see the module docstring). Blocks while none is
    free. ConfigError for a bad BPFREE_GPU_SLOTS, also where pinning does not apply (the profile
    reads it too)."""
    n = slots()
    if os.environ.get("BPFREE_GPU_PIN", "1") == "0" or "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    if device not in ("auto", "cuda"):
        return None
    devices = gpus()
    if not devices or (len(devices) < 2 and n == 1 and not os.environ.get("BPFREE_GPUS")):
        return None
    waited = False
    while True:
        got = take(devices, n, whole)
        if got is not None:
            _held.extend(got[1])
            os.environ["CUDA_VISIBLE_DEVICES"] = got[0]
            return got[0]
        if not waited:
            what = "no GPU is wholly free" if whole else "every slot of every GPU is taken"
            print(f"bpfree: {what} (GPUs {','.join(devices)}, {n} slot{'s' if n > 1 else ''} each, locks in "
                  f"{lock_dir()}); waiting", file=sys.stderr, flush=True)
            waited = True
        time.sleep(poll_s)
