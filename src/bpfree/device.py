"""The device a job runs on: choosing it from the config's `device`, waiting for it, and the NVIDIA
driver behind it (NVML). One home for these, so that search, training, the meter, `bpfree doctor`,
provenance and the GPU slots ask the same questions the same way.

NVML (the `pynvml` module of the package nvidia-ml-py) is optional: without the module or the
driver every query here answers None, never an error.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from bpfree.errors import ConfigError



def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's first `model name`; elsewhere the platform's)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

def check_device(name: str, key: str = "device") -> None:
    """ConfigError naming `key` if `name` (auto, cpu, cuda, cuda:N) names no device torch sees here."""
    if name in ("auto", "cpu"):
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"{key} = {name!r}: torch {torch.__version__} sees no CUDA device on this machine; "
                          "use auto or cpu")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{key} = {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def resolve_device(name: str) -> torch.device:
    """The torch device for the config's `device` (auto: cuda if available, else cpu); ConfigError
    if it names none on this machine."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA kernels run asynchronously; the CPU needs nothing),
    so that a clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- NVML -----------------------------------------------------------------------------------------

def load_nvml(nvml: Any = "auto") -> Any:
    """The initialised pynvml module, a stand-in passed by tests, or None where the module or the
    driver is absent (`nvml` None: NVML is not wanted). The one place NVML is initialised."""
    if nvml is None:
        return None
    if nvml == "auto":
        try:
            import pynvml as nvml
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    return nvml


def nvml_problem() -> str:
    """Why `load_nvml()` found no NVML on this machine, in words (for `bpfree doctor`)."""
    try:
        import pynvml
    except ImportError:
        return "absent: no pynvml module (package nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as e:
        return f"unusable: nvmlInit failed ({e}): no NVIDIA driver"
    return "absent"


def text(v: Any) -> str:
    """An NVML string (bytes in older nvidia-ml-py releases) as str."""
    return v.decode() if isinstance(v, bytes) else str(v)


def nvidia_driver(nvml: Any = "auto") -> str | None:
    """The NVIDIA driver version (NVML; without NVML, `nvidia-smi`'s answer), None without a driver."""
    lib = load_nvml(nvml)
    if lib is not None:
        try:
            return text(lib.nvmlSystemGetDriverVersion())
        except Exception:
            pass
    if nvml != "auto":  # a stand-in or no NVML wanted: do not ask this machine's driver instead
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def gpu_count(nvml: Any = "auto") -> int:
    """GPUs the driver lists (every one: CUDA_VISIBLE_DEVICES does not apply to NVML), without
    initialising CUDA in this process; 0 without NVML."""
    lib = load_nvml(nvml)
    try:
        return int(lib.nvmlDeviceGetCount()) if lib is not None else 0
    except Exception:
        return 0


def nvml_handle(nvml: Any, device: torch.device | int) -> Any:
    """The NVML handle of a torch device (by UUID: CUDA_VISIBLE_DEVICES renumbers torch devices),
    or of an NVML index."""
    if isinstance(device, int):
        return nvml.nvmlDeviceGetHandleByIndex(device)
    idx = device.index if device.index is not None else torch.cuda.current_device()
    try:
        uuid = str(torch.cuda.get_device_properties(idx).uuid)
        uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        return nvml.nvmlDeviceGetHandleByUUID(uuid.encode())
    except Exception:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        if idx < len(visible) and visible[idx].strip().isdigit():
            idx = int(visible[idx])
        return nvml.nvmlDeviceGetHandleByIndex(idx)


def set_flush_denormal(spec: dict) -> bool:
    """Flush subnormal floats to zero for this process if the spec asks (default: yes): x86 CPUs
    compute on subnormals in a slow path (a matrix product with subnormal inputs ran 146 times
    slower on the developers' machine), so an algorithm whose signals decay into that range gets
    slower as it trains for reasons that have nothing to do with it. Returns the setting in force
    (False where the CPU cannot flush)."""
    import torch

    want = bool(spec.get("flush_denormal", True))
    return bool(torch.set_flush_denormal(want)) and want
