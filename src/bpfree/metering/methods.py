"""The choice of each component's energy method, and the energy sources: each owns its method
label, its curves and its reads."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bpfree.metering.curves import UNAVAILABLE, Curve, PowerCurve
from bpfree.metering.readers import Gpu, Rapl


def choose_methods(want_gpu: bool, gpu: Any, rapl: Iterable[str], estimate: bool) -> dict[str, str]:
    """The energy method of each component, in COMPONENTS order: the GPU's NVML counter, else its
    power reading, else unavailable (CodeCarbon's GPU figure needs NVML too: it would be a silent
    0 J); cpu and dram from RAPL where a readable zone exists, else CodeCarbon's estimate where
    `estimate`, else unavailable. `want_gpu`: the window has a GPU component; `gpu`: anything with
    `counter` and `power` flags (a Gpu), or None without NVML; `rapl`: the components with a
    readable RAPL zone. The meter and `bpfree doctor` both decide through this function."""
    out: dict[str, str] = {}
    if want_gpu:
        out["gpu"] = ("nvml-counter" if gpu is not None and gpu.counter else
                      "nvml-power" if gpu is not None and gpu.power else UNAVAILABLE)
    rapl = set(rapl)
    for c in ("cpu", "dram"):
        out[c] = "rapl" if c in rapl else "estimate" if estimate else UNAVAILABLE
    return out


# ---- energy sources: each owns its method label, its curves and its reads -------------------------

class GpuCounter:
    """`nvml-counter`: the GPU's total-energy counter, read at the window's edges (device synchronised)."""

    method = "nvml-counter"

    def __init__(self, gpu: Gpu):
        self.gpu, self.curves = gpu, {"gpu": Curve()}

    def read(self, t: float, edge: bool, row: dict) -> None:
        if edge and (e := Gpu.attempt(self.gpu.energy_j)) is not None:  # a failed read: interpolated instead
            self.curves["gpu"].add(t, e)


class GpuPower:
    """`nvml-power`: the GPU's board power (every reading, edges included), trapezoid-integrated."""

    method = "nvml-power"

    def __init__(self, gpu: Gpu):
        self.gpu, self.curves = gpu, {"gpu": PowerCurve()}

    def read(self, t: float, edge: bool, row: dict) -> None:
        if row["gpu_w"] is not None:
            self.curves["gpu"].add_power(t, row["gpu_w"])


class RaplSource:
    """`rapl`: the powercap counters of the components it covers (package -> cpu, dram -> dram)."""

    method = "rapl"

    def __init__(self, rapl: Rapl):
        self.rapl, self.curves = rapl, {c: Curve() for c in rapl.components}

    def read(self, t: float, edge: bool, row: dict) -> None:
        row["rapl"] = self.rapl.read()
        for c, e in row["rapl"].items():
            self.curves[c].add(t, e)


class Estimate:
    """`estimate`: CodeCarbon's modelled energy of the components without a counter. Its readings
    are taken by CodeCarbon (or by the meter's sampler, `driven`) and copied into the curves by
    `collect()`, which measures nothing."""

    method = "estimate"

    def __init__(self, tracker: Any, components: Iterable[str]):
        self.tracker, self.curves = tracker, {c: Curve() for c in components}
        self.driven = False
        self._seen = 0

    def start(self) -> None:
        self.tracker.start()
        self.driven = self.tracker.take_over()

    def read(self, t: float, edge: bool, row: dict) -> None:
        pass  # CodeCarbon reads on its own clock

    def collect(self) -> None:
        with self.tracker.bp_lock:
            snaps = self.tracker.snapshots[self._seen:]
        self._seen += len(snaps)
        for t, tot in snaps:
            for c, curve in self.curves.items():
                curve.add(t, tot[c])
