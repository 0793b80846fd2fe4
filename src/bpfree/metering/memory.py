"""Peak memory of a measurement window: torch's allocator on CUDA, the kernel's VmHWM or the
sampled resident set on the CPU (the whole process: the torch runtime and the data too); beside it
the algorithm's own, where the CPU has no allocator to ask: how far the resident set grew in the
window, and the bytes of the tensors the algorithm keeps (`tensor_mib`)."""
from __future__ import annotations

from pathlib import Path

import torch

from bpfree.metering.curves import MIB


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss * 1.01 + 64


def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else float("nan")


class PeakMemory:
    """Peak memory of the window: torch's allocator peak on CUDA; on the CPU the kernel's VmHWM where
    it can be reset (`hwm`), else the largest resident set the sampler saw."""

    def __init__(self, device: torch.device, sample_hz: float):
        self.device, self.sample_hz = device, sample_hz
        self.hwm = False
        self.start_mib = float("nan")
        self.sampled_mib = 0.0

    def open(self) -> None:
        """At the window's start: reset every peak."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start_mib = rss_mib()
        self.hwm = reset_peak_rss()
        self.sampled_mib = self.start_mib

    def sample(self) -> None:
        if not self.hwm:
            self.sampled_mib = max(self.sampled_mib, rss_mib())

    def result(self) -> dict:
        if self.device.type == "cuda":
            out = {"peak_memory_mib": torch.cuda.max_memory_allocated(self.device) / MIB,
                   "peak_memory_method": "torch.cuda.max_memory_allocated (process-local, reset at window start)"}
        elif self.hwm and (hwm := _status_kib("VmHWM")) is not None:
            out = {"peak_memory_mib": hwm / 1024,
                   "peak_memory_method": "VmHWM (kernel peak resident set of the process, reset at window start)"}
        else:
            self.sampled_mib = max(self.sampled_mib, rss_mib())
            out = {"peak_memory_mib": self.sampled_mib,
                   "peak_memory_method": f"max resident set sampled at {self.sample_hz:g} Hz during the window"}
        out["rss_at_start_mib"] = self.start_mib
        # CPU: what training added over what was resident when the window opened (the torch runtime,
        # the data and the initial weights were): optimiser state, gradients, activations, temporaries
        out["rss_growth_mib"] = None if self.device.type == "cuda" else max(out["peak_memory_mib"] - self.start_mib,
                                                                             0.0)
        return out


def tensor_mib(state) -> float:
    """MiB of the distinct tensors in `state` (nested dicts, lists and tuples of tensors, e.g.
    `bpfree.checkpoint.algo_state(algo)`: weights, buffers, feedback matrices, optimiser moments),
    each storage counted once."""
    seen, total, todo = set(), 0, [state]
    while todo:
        x = todo.pop()
        if isinstance(x, torch.Tensor):
            key = (x.untyped_storage().data_ptr(), x.device)
            if key not in seen:
                seen.add(key)
                total += x.untyped_storage().nbytes()
        elif isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, (list, tuple)):
            todo.extend(x)
    return total / MIB
