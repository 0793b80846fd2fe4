"""Where a result came from: code version, software, hardware and the exact job spec, recorded in
every run's JSON so that a number can be traced back (and a mixed-version table detected)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bpfree", "torch", "numpy", "optuna", "codecarbon", "pandas", "snakemake", "scikit-learn", "nvidia-ml-py")


def spec_sha256(obj: object) -> str:
    """Hash of a JSON-able object (the resolved job spec), key order ignored."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def git() -> dict:
    """Commit of the source tree and whether the package tree (src/) holds files that are modified
    or not tracked (not ignored) since it (None: not a checkout)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=all", "--", "src")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    out["torch_cuda"] = torch.version.cuda
    return out


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def slurm() -> dict:
    """The SLURM job this process runs in (all None outside SLURM). `slurm_job_id` is the id under
    which squeue and sacct list it: `<array job>_<task>` for an array task (its SLURM_JOB_ID, kept as
    `slurm_raw_job_id`, is a number of its own), else SLURM_JOB_ID."""
    job, array, task = (os.environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"))
    return {"slurm_job_id": f"{array}_{task}" if array and task else job, "slurm_raw_job_id": job,
            "slurm_array_job_id": array, "slurm_array_task_id": task}


def hardware(device: torch.device | str) -> dict:
    device = torch.device(device)
    out = {"device_type": device.type, "host": socket.gethostname(), "platform": platform.platform(),
           "cpu": platform.processor() or platform.machine(), **slurm(),
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        out.update(device_name=torch.cuda.get_device_name(idx), driver=_nvidia_driver(),
                   cudnn=torch.backends.cudnn.version())
    else:
        out.update(device_name=out["cpu"] or "cpu", driver=None)
    return out


def collect(spec: dict, device: torch.device | str = "cpu", **extra: object) -> dict:
    """Everything above plus the hash of the resolved spec (and of `extra`, e.g. hyperparameters
    and seed): two results with the same `run_sha256` came from the same inputs; and `sources`, the
    sha256 of every file the result depends on (bpfree.sources: the algorithm's module, tracked by
    git or not, the core, and the stage's module: search.py for a search spec, else train.py and
    metering.py)."""
    from bpfree import sources

    stage = ("search.py",) if "search" in spec else ("train.py", "metering.py")
    return {**git(), "packages": versions(), **hardware(device), "spec_sha256": spec_sha256(spec),
            "run_sha256": spec_sha256({"spec": spec, **extra}),
            "sources": sources.hashes(spec.get("impl"), extra=stage)}
