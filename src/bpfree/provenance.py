"""Where a result came from: code version, software, hardware and the exact job spec, recorded in
every run's JSON so that a number can be traced back (and a mixed-version table detected)."""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import platform
import socket
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from bpfree import sources

# The packages whose versions every result records and `bpfree doctor` prints (distribution names).
PACKAGES = ("bpfree", "torch", "numpy", "optuna", "codecarbon", "pandas", "snakemake", "scikit-learn", "nvidia-ml-py")


@lru_cache(maxsize=1)
def git() -> dict:
    """Commit of the source tree and whether the package tree (src/) holds files that are modified
    or not tracked (not ignored) since it (None: not a checkout)."""
    commit = sources.git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = sources.git("status", "--porcelain", "--untracked-files=all", "--", "src")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def version(dist: str) -> str | None:
    """The installed version of the distribution `dist`; None if it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Python, every package of PACKAGES, and the CUDA version torch was built with (None: CPU build)."""
    return {"python": platform.python_version(), **{p: version(p) for p in PACKAGES},
            "torch_cuda": torch_cuda()}


@lru_cache(maxsize=1)
def torch_cuda() -> str | None:
    """`torch.version.cuda` (None: a CPU build), read from torch/version.py when torch is not imported:
    a job that trains nothing (the search's collect step) need not pay torch's import for it."""
    if "torch" in sys.modules:
        return sys.modules["torch"].version.cuda
    spec = importlib.util.find_spec("torch")
    path = Path(spec.origin).with_name("version.py") if spec and spec.origin else None
    if path is None or not path.is_file():
        return None
    for node in ast.parse(path.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "cuda" and node.value is not None:
            return ast.literal_eval(node.value)
    return None


def slurm() -> dict:
    """The SLURM job this process runs in (all None outside SLURM). `slurm_job_id` is the id under
    which squeue and sacct list it: `<array job>_<task>` for an array task (its SLURM_JOB_ID, kept as
    `slurm_raw_job_id`, is a number of its own), else SLURM_JOB_ID."""
    job, array, task = (os.environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"))
    return {"slurm_job_id": f"{array}_{task}" if array and task else job, "slurm_raw_job_id": job,
            "slurm_array_job_id": array, "slurm_array_task_id": task}


def hardware(device: Any) -> dict:
    """Where a job runs: `device` is a torch.device or its name ("cpu", "cuda:1"); torch is imported
    only for a CUDA device."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    out = {"device_type": kind, "host": socket.gethostname(), "platform": platform.platform(),
           "cpu": platform.processor() or platform.machine(), **slurm(),
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if kind == "cuda":
        import torch

        from bpfree import device as devices

        device = torch.device(device)
        idx = device.index if device.index is not None else torch.cuda.current_device()
        out.update(device_name=torch.cuda.get_device_name(idx), driver=devices.nvidia_driver(),
                   cudnn=torch.backends.cudnn.version())
    else:
        out.update(device_name=out["cpu"] or "cpu", driver=None)
    return out


def collect(spec: dict, device: Any = "cpu", **extra: object) -> dict:
    """Everything above plus the hash of the resolved spec (and of `extra`, e.g. hyperparameters
    and seed): two results with the same `run_sha256` came from the same inputs; and `sources`, the
    sha256 of every file the result depends on (bpfree.sources: the algorithm's module, tracked by
    git or not, the core, and the stage's modules: search.py, study.py and journal.py for a search spec, else
    train.py, the modules of the metering package and device.py, through which the meter reads
    NVML; and protocol.py, the defaults of the stage's protocol section)."""
    return {**git(), "packages": versions(), **hardware(device), "spec_sha256": sources.digest(spec),
            "run_sha256": sources.digest({"spec": spec, **extra}),
            "sources": sources.hashes(spec.get("impl"), extra=_stage(spec))}


def _stage(spec: dict) -> tuple[str, ...]:
    if "search" in spec:
        return ("search.py", "study.py", "journal.py", "protocol.py")
    meter = tuple(f"metering/{f.name}" for f in sources.package_modules("metering"))
    return ("train.py", *meter, "device.py", "protocol.py")


def finished(start: dict, spec: dict) -> tuple[dict, str | None]:
    """The provenance of a job's result: `start` (`collect` when the job began, when its code was
    imported: the code that ran), plus `changed_during_run` where the checkout changed under the
    running job: the source files whose bytes differ now and the commit now. Returns the record and a
    one-line warning (None when nothing changed). Collected only at the end, an edit made while a
    job ran would be recorded as the code that produced its result."""
    now = sources.hashes(spec.get("impl"), extra=_stage(spec))
    files = sorted(f for f in {*now, *start["sources"]} if now.get(f) != start["sources"].get(f))
    commit = sources.git("rev-parse", "HEAD") if start.get("git_commit") else None
    if not files and commit == start.get("git_commit"):
        return start, None
    changed = {"files": files, "git_commit_at_end": commit}
    what = f"{', '.join(files)} changed" if files else "the commit moved (no file of this job changed)"
    return ({**start, "changed_during_run": changed},
            f"warning: {what} while this job ran; its provenance records the code at its start")
