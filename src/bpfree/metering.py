"""Energy, time and memory of a training phase, through one measurement-window API that every
algorithm goes through identically (train.py):

    meter = Meter(device, country="FRA", idle_seconds=5, sample_hz=10)
    meter.start()        # idle-power baseline (if idle_seconds > 0), then the window opens
    ... meter.mark()     # after every epoch: cheap (a clock and, where they exist, counter reads)
    result = meter.stop()
    meter.epochs         # per-epoch seconds and joules, final (estimates apportioned by time)
    meter.trace_rows()   # the sampler's readings (a power trace on GPU / RAPL machines; empty if none)

Energy is kept per component (`gpu`, `cpu`, `dram`) with the method that produced it:

- `nvml-counter`  GPU total-energy counter (mJ), read at the window edges with the device synchronised;
- `nvml-power`    GPU power samples from the background sampler, integrated (trapezoid) — fallback;
- `rapl`          powercap `energy_uj` counters (package -> cpu, dram -> dram), wrap-around corrected;
- `estimate`      CodeCarbon's model, used only for a component without a counter.

A component that cannot be measured or estimated is reported as `None` with method `unavailable`,
never as 0 J. Emissions are derived from the energy with CodeCarbon's offline carbon intensity.

Beside these, `energy_board_j` is the quantity the original study reported, so that its figures
are compared with the column that measures the same thing: GPU board power polled every 0.2 s
(`nvmlDeviceGetPowerUsage`), trapezoid-integrated, GPU only, no idle subtraction (its
`src/utils/monitoring.py`; docs/field-algorithms.md, last section). Without a GPU power
reading it is `None`, "unavailable". A window too short to trust (fewer than 60 power samples, as
MLPerf's power rules ask, or under 1 s of counter readings) is named in `energy_window_warning`.

Every source becomes a cumulative-energy curve (time, joules); the energy between two edges is the
difference of the curve at those times. Counters are read at each edge, so their edge values are
exact; power samples and CodeCarbon readings are interpolated linearly, i.e. apportioned by time.

Layout: `choose_methods` picks the method of each component (and `bpfree doctor` calls it too); one
class per energy source owns its label, curves and reads (`GpuCounter`, `GpuPower`, `RaplSource`,
`Estimate`); `Sampler` is the background thread; the summaries are pure functions of the readings
(`component_energy`, `board_summary`, `window_warning`, `epoch_records`, `trace_rows`, ...); `Meter`
opens the window and puts these together. Device synchronisation and NVML: bpfree.device.
"""
from __future__ import annotations

import bisect
import difflib
import gc
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from bpfree.device import load_nvml, nvml_handle, sync, text
from bpfree.errors import ConfigError

KWH = 3.6e6  # joules per kWh
MIB = 2**20
POWERCAP = Path("/sys/class/powercap")
COMPONENTS = ("gpu", "cpu", "dram")
UNAVAILABLE = "unavailable"
ORIGINAL_STUDY_HZ = 5.0  # the original study's power polling rate (one reading per 0.2 s)
MIN_POWER_SAMPLES = 60  # MLPerf power rules: fewer samples than this in a window is too few
MIN_COUNTER_S = 1.0  # counters (NVML energy, RAPL) update every few to tens of ms: under 1 s is too short


# ---- cumulative-energy curves ---------------------------------------------------------------------

class Curve:
    """Cumulative joules at increasing times; `at(t)` interpolates linearly and extrapolates past
    the last point with the last segment's power (before the first point: the first value)."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.e: list[float] = []

    def add(self, t: float, e: float) -> None:
        if self.t and t < self.t[-1]:  # a late reading from another thread: keep the curve monotonic in time
            return
        self.t.append(t)
        self.e.append(e)

    def at(self, t: float) -> float | None:
        ts, es = self.t, self.e
        if not ts:
            return None
        if t <= ts[0]:
            return es[0]
        i = bisect.bisect_right(ts, t)
        if i == len(ts):
            if len(ts) < 2 or ts[-1] == ts[-2]:
                return es[-1]
            slope = (es[-1] - es[-2]) / (ts[-1] - ts[-2])
            return es[-1] + slope * (t - ts[-1])
        t0, t1, e0, e1 = ts[i - 1], ts[i], es[i - 1], es[i]
        return e0 if t1 == t0 else e0 + (e1 - e0) * (t - t0) / (t1 - t0)


class PowerCurve(Curve):
    """A Curve fed with power samples (W), integrated by the trapezoid rule."""

    def __init__(self) -> None:
        super().__init__()
        self._p: float | None = None

    def add_power(self, t: float, watts: float) -> None:
        if not self.t:
            self.add(t, 0.0)
        elif t >= self.t[-1]:
            self.add(t, self.e[-1] + 0.5 * (self._p + watts) * (t - self.t[-1]))
        else:
            return
        self._p = watts


def board_energy(samples: list[tuple[float, float]], hz: float = ORIGINAL_STUDY_HZ) -> tuple[float | None, int]:
    """The original study's GPU energy from (time s, power W) samples: the samples thinned to at most
    `hz` (a sample is kept once 0.75 / hz s have passed since the last kept one, so a 10 Hz trace
    gives every other reading), then trapezoid-integrated between the first and last kept sample.
    Returns (joules, samples used); (None, n) with fewer than 2 samples."""
    kept: list[tuple[float, float]] = []
    for t, w in samples:
        if not kept or t - kept[-1][0] >= 0.75 / hz:
            kept.append((t, w))
    if len(kept) < 2:
        return None, len(kept)
    j = sum(0.5 * (w0 + w1) * (t1 - t0) for (t0, w0), (t1, w1) in zip(kept, kept[1:]))
    return j, len(kept)


# ---- RAPL (powercap) ------------------------------------------------------------------------------

def rapl_domains(root: str | Path | None = POWERCAP) -> list[dict]:
    """Every RAPL zone under `root`: name, component (`cpu` for package-N, `dram`; None for core,
    uncore and psys, which overlap a package) and whether its counter is readable."""
    out: list[dict] = []
    if root is None or not Path(root).is_dir():
        return out
    for zone in sorted(Path(root).glob("intel-rapl:*")):
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        comp = "cpu" if name.startswith("package") else "dram" if name == "dram" else None
        d = {"zone": zone.name, "name": name, "component": comp, "path": str(zone), "readable": False,
             "error": None, "max_uj": None}
        try:
            int((zone / "energy_uj").read_text())
            d["max_uj"] = int((zone / "max_energy_range_uj").read_text())
            d["readable"] = True
        except PermissionError:
            d["error"] = "not readable (permission; root only on this kernel)"
        except (OSError, ValueError) as e:
            d["error"] = f"not readable ({e.__class__.__name__}: {e})"
        out.append(d)
    return out


class Rapl:
    """Cumulative joules per component since construction, summed over the readable zones of that
    component. A reading below the previous one is a wrap: max_energy_range_uj is added. The
    sampler reads often enough (>= 1 Hz) that at most one wrap happens between two readings."""

    def __init__(self, root: str | Path | None = POWERCAP):
        self.zones = [d for d in rapl_domains(root) if d["component"] and d["readable"]]
        self.components = sorted({d["component"] for d in self.zones})
        self._last = {d["zone"]: self._raw(d) for d in self.zones}
        self._total = {d["zone"]: 0 for d in self.zones}

    @staticmethod
    def _raw(d: dict) -> int:
        return int(Path(d["path"], "energy_uj").read_text())

    def read(self) -> dict[str, float]:
        out = dict.fromkeys(self.components, 0.0)
        for d in self.zones:
            raw = self._raw(d)
            delta = raw - self._last[d["zone"]]
            if delta < 0:
                delta += d["max_uj"]
            self._last[d["zone"]] = raw
            self._total[d["zone"]] += delta
            out[d["component"]] += self._total[d["zone"]] / 1e6
        return out


# ---- NVML -----------------------------------------------------------------------------------------

class Gpu:
    """NVML readings of one GPU; `counter` says whether the total-energy counter exists, `power`
    whether the board power reading does. `nvml` is an initialised module (device.load_nvml)."""

    def __init__(self, nvml: Any, device: torch.device | int):
        self.nvml = nvml
        self.handle = nvml_handle(nvml, device)
        self.name = text(nvml.nvmlDeviceGetName(self.handle))
        self.counter = self.attempt(self.energy_j) is not None
        self.power = self.attempt(self.power_w) is not None

    @staticmethod
    def attempt(fn):
        """fn(), or None if it raises (NVML answers "Not Supported" per device and per query)."""
        try:
            return fn()
        except Exception:
            return None

    def energy_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3

    def power_w(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3

    def util_pct(self) -> float | None:
        return self.attempt(lambda: float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))

    def memory_mib(self) -> float | None:
        return self.attempt(lambda: self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / MIB)


def open_gpu(nvml: Any, device: torch.device | int) -> Gpu | None:
    """The Gpu of `device` through NVML (`nvml` as device.load_nvml takes it); None without NVML or
    when NVML does not know the device."""
    lib = load_nvml(nvml)
    if lib is None:
        return None
    try:
        return Gpu(lib, device)
    except Exception:
        return None


# ---- CodeCarbon -----------------------------------------------------------------------------------

def check_country(code: str, key: str = "protocol.metering.country_iso_code") -> None:
    """ConfigError unless CodeCarbon has a carbon intensity for the ISO 3166-1 alpha-3 `code`: for
    a code it does not know, CodeCarbon records the world average under that code's name."""
    from codecarbon.input import DataSource

    known = DataSource().get_global_energy_mix_data()
    if code not in known:
        close = difflib.get_close_matches(code, known, n=3, cutoff=0.6)
        raise ConfigError(f"{key} = {code!r}: CodeCarbon has no carbon intensity for this country code (it would "
                          f"record the world average); give an ISO 3166-1 alpha-3 code such as "
                          f"{', '.join(close or ['FRA', 'DEU', 'USA'])}")


def codecarbon_tracker(country: str, output_dir: str, interval_s: float = 1.0) -> Any:
    """CodeCarbon's offline tracker (no network), recording after each of its measurements the
    cumulative CPU, RAM and GPU energy of its power model, so that marks never pay for a measurement.
    Relies on CodeCarbon 3.3 internals (checked by tests/test_metering.py)."""
    os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    from codecarbon import OfflineEmissionsTracker

    class Tracker(OfflineEmissionsTracker):
        def __init__(self, **kw):
            self.bp_lock = threading.Lock()
            self.snapshots: list[tuple[float, dict[str, float]]] = []
            super().__init__(**kw)

        def _measure_power_and_energy(self) -> None:  # run by CodeCarbon's scheduler thread and by stop()
            # CodeCarbon's own energy misses the time spent between its per-hardware readings (~4 % of
            # RAM energy here); its modelled power x our clock's interval covers the window exactly.
            with self.bp_lock:
                super()._measure_power_and_energy()
                t = self._last_measured_time
                if not self.snapshots:  # the origin of the curve: nothing consumed at start()
                    self.snapshots.append((self._start_time, dict.fromkeys(COMPONENTS, 0.0)))
                t0, e0 = self.snapshots[-1]
                p = {"cpu": self._cpu_power.W, "dram": self._ram_power.W, "gpu": self._gpu_power.W}
                self.snapshots.append((t, {c: e0[c] + p[c] * (t - t0) for c in COMPONENTS}))

        def measure_now(self) -> None:
            self._measure_power_and_energy()

        def take_over(self) -> bool:
            """Stop CodeCarbon's two timer threads (a new thread per tick, and a 1 Hz utilisation
            monitor that process mode does not need: its CPU power is the process's CPU-time delta
            over the interval); the meter's sampler then calls measure_now(). False if not possible."""
            scheds = [getattr(self, "_scheduler", None), getattr(self, "_scheduler_monitor_power", None)]
            if any(s is None or not hasattr(s, "stop") for s in scheds) or self._tracking_mode != "process":
                return False
            for sc in scheds:
                sc.stop()
            return True

    os.makedirs(output_dir, exist_ok=True)  # CodeCarbon fails silently without it
    return Tracker(country_iso_code=country, output_dir=output_dir, output_methods=[], log_level="error",
                   tracking_mode="process", measure_power_secs=interval_s, allow_multiple_runs=True)


# ---- the choice of method ---------------------------------------------------------------------------

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


def energy_between(curve: Curve | None, a: float, b: float) -> float | None:
    """Joules of a cumulative curve between times a and b; None without readings."""
    if curve is None or not curve.t:
        return None
    ea, eb = curve.at(a), curve.at(b)
    return None if ea is None or eb is None else eb - ea


# ---- process memory -------------------------------------------------------------------------------

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
        return out


# ---- the background sampler -----------------------------------------------------------------------

class Sampler:
    """A daemon thread calling `read()` every `period` seconds and, where the meter drives
    CodeCarbon (`estimate`), its measurement every `estimate_interval_s`. A failing reading is
    logged and shows as a missing sample; it never stops the run."""

    def __init__(self, read: Callable[[], Any], period: float, estimate: Estimate | None = None,
                 estimate_interval_s: float = 5.0):
        self.read, self.period = read, period
        self.estimate, self.estimate_interval_s = estimate, estimate_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bpfree-meter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        period = self.period
        drive = self.estimate is not None and self.estimate.driven
        next_estimate = time.perf_counter() + self.estimate_interval_s
        while not self._stop.wait(period):
            try:
                self.read()
                now = time.perf_counter()
                if drive and now >= next_estimate - 0.5 * period:  # slack: wakes are not exact
                    self.estimate.tracker.measure_now()
                    next_estimate = now + self.estimate_interval_s
            except Exception as e:
                logging.getLogger(__name__).warning("meter sample failed: %s", e)


# ---- summaries: pure functions of the readings ----------------------------------------------------
# A sample is (t, gpu_w, gpu_util_pct, gpu_memory_mib, rapl cumulative joules by component or None).

def method_label(methods: dict[str, str]) -> str:
    """One label for the run: the common method, or `mixed: gpu=..., cpu=...`."""
    if len(set(methods.values())) == 1:
        return next(iter(methods.values()))
    return "mixed: " + ", ".join(f"{c}={methods[c]}" for c in COMPONENTS if c in methods)


def component_energy(curves: dict[str, Curve], methods: dict[str, str], t0: float, t_end: float,
                     idle: tuple[float, float] | None) -> dict[str, dict]:
    """Per component: joules of the window, method (unavailable without readings), idle power over
    the `idle` interval and the dynamic joules (the window's minus idle power x its length)."""
    out: dict[str, dict] = {}
    for c in (c for c in COMPONENTS if c in methods):
        j = energy_between(curves.get(c), t0, t_end)
        idle_w = None
        if idle is not None and j is not None:
            ij = energy_between(curves.get(c), *idle)
            idle_w = ij / (idle[1] - idle[0]) if ij is not None and idle[1] - idle[0] > 0 else None
        out[c] = {"j": j, "method": methods[c] if j is not None else UNAVAILABLE, "idle_w": idle_w,
                  "dynamic_j": j - idle_w * (t_end - t0) if idle_w is not None else None}
    return out


def emissions(final: Any, energy: float | None, label: str, country: str) -> dict:
    """Emissions of `energy` joules at the offline carbon intensity in CodeCarbon's `final` report."""
    if final is None or energy is None or not final.energy_consumed:
        return {"emissions_kg": None, "carbon_intensity_g_per_kwh": None,
                "emissions_method": "unavailable (CodeCarbon did not report)"}
    kg_per_kwh = final.emissions / final.energy_consumed  # the offline country intensity
    return {"emissions_kg": energy / KWH * kg_per_kwh, "carbon_intensity_g_per_kwh": 1e3 * kg_per_kwh,
            "emissions_method": f"derived: energy_j ({label}) x CodeCarbon offline carbon intensity of {country}"}


def gpu_summary(samples: list[tuple], gpu: Gpu | None, t0: float, t_end: float, sample_hz: float) -> dict:
    """The power trace's presence, and the GPU's name, mean utilisation and device-memory peak."""
    window = [s for s in samples if t0 <= s[0] <= t_end]
    has_power = any(s[1] is not None for s in samples) or any(s[4] for s in samples)
    out: dict[str, Any] = {
        "power_trace": "power_trace.csv" if has_power else None,
        "power_trace_note": None if has_power else "no power reading on this machine (no NVML, no readable RAPL)",
    }
    if gpu is not None:
        utils = [s[2] for s in window if s[2] is not None]
        mems = [s[3] for s in window if s[3] is not None]
        out.update({
            "gpu_name": gpu.name,
            "gpu_util_mean_pct": sum(utils) / len(utils) if utils else None,
            "gpu_device_memory_peak_mib": max(mems) if mems else None,
            "gpu_device_memory_method": f"NVML memory used, device-wide incl. CUDA context, max of samples "
                                        f"at {sample_hz:g} Hz",
        })
    return out


def board_summary(samples: list[tuple], t0: float, t_end: float, sample_hz: float, gpu: Gpu | None,
                  cuda: bool) -> dict:
    """energy_board_j, the original study's quantity (see the module docstring), from the power
    samples of `gpu` (None: no GPU metered; `cuda`: the run's device is a GPU)."""
    if gpu is None or not gpu.power:
        why = "no GPU power reading (NVML)" if gpu is not None or cuda else "no GPU: a CPU-only run"
        return {"energy_board_j": None, "energy_board_samples": 0, "energy_board_method": f"{UNAVAILABLE}: {why}"}
    rate = min(sample_hz, ORIGINAL_STUDY_HZ)
    j, n = board_energy([(t, w) for t, w, *_ in samples if t0 <= t <= t_end and w is not None], rate)
    return {"energy_board_j": j, "energy_board_samples": n,
            "energy_board_method": f"nvml-power at {rate:g} Hz, trapezoid, GPU board only, no idle subtraction "
                                   "(the original study's method)" if j is not None else
                                   f"{UNAVAILABLE}: fewer than 2 power samples in the window"}


def window_warning(comps: dict, seconds: float, n_power: int, board_samples: int | None) -> str | None:
    """Which figures come from a window too short to trust (None: none). `n_power`: GPU power
    samples in the window where nvml-power is the GPU's method, else None; `board_samples`: the
    board column's samples where there is a GPU power reading, else None."""
    short = []
    if n_power is not None and n_power < MIN_POWER_SAMPLES:
        short.append(f"gpu energy from {n_power} power samples")
    if board_samples is not None and board_samples < MIN_POWER_SAMPLES:
        short.append(f"energy_board_j from {board_samples} power samples")
    if seconds < MIN_COUNTER_S:
        short += [f"{c} energy from {seconds:.2f} s of {v['method']} readings" for c, v in comps.items()
                  if v["method"] in ("nvml-counter", "rapl")]
    if not short:
        return None
    return (f"too short to trust: {'; '.join(short)} (need >= {MIN_POWER_SAMPLES} power samples, "
            f"as MLPerf's power rules ask, or >= {MIN_COUNTER_S:g} s of counter readings)")


def epoch_records(curves: dict[str, Curve], components: Iterable[str], t0: float, marks: list[float]) -> list[dict]:
    """Per mark: seconds, elapsed, joules (total and per component) and cumulative joules."""
    rows, prev, cum = [], t0, 0.0
    for t in marks:
        row: dict[str, Any] = {"elapsed_s": t - t0, "window_s": t - prev}
        total, ok = 0.0, False
        for c in components:
            j = energy_between(curves.get(c), prev, t)
            row[f"energy_{c}_j"] = j
            if j is not None:
                total, ok = total + j, True
        row["energy_j"] = total if ok else None
        cum += total
        row["cum_energy_j"] = cum if ok else None
        rows.append(row)
        prev = t
    return rows


def trace_rows(samples: list[tuple], t0: float, idle_start: float | None) -> list[dict]:
    """The power trace: one row per sampler reading (time from the first sample; phase setup,
    idle or train; GPU power, utilisation and device memory; RAPL power from counter differences)."""
    if not samples:
        return []
    t_first = samples[0][0]
    rows, prev = [], None
    for t, gpu_w, util, mem, rapl in samples:
        phase = "train" if t >= t0 else ("idle" if idle_start is not None and t >= idle_start else "setup")
        row = {"t_s": t - t_first, "phase": phase, "gpu_w": gpu_w, "gpu_util_pct": util, "gpu_memory_mib": mem}
        if rapl:
            for c, e in rapl.items():
                row[f"{c}_w"] = (e - prev[1][c]) / (t - prev[0]) if prev and t > prev[0] else None
            prev = (t, rapl)
        rows.append(row)
    return rows


# ---- the meter ------------------------------------------------------------------------------------

class Meter:
    """One measurement window (see the module docstring): opens the energy sources that
    `choose_methods` picks, runs the Sampler, marks edges, and summarises with the functions above.

    `powercap_root` (None: no RAPL) and `nvml` ("auto": import pynvml; None: no NVML; or a stand-in
    module) are injectable for tests; `gpu` is the NVML device to meter ("auto": the torch device's
    GPU when `device` is CUDA; an int: that NVML index; None: no GPU component)."""

    def __init__(self, device: torch.device | str, country: str = "FRA", idle_seconds: float = 0.0,
                 sample_hz: float = 10.0, output_dir: str | None = None, *,
                 powercap_root: str | Path | None = POWERCAP, nvml: Any = "auto", gpu: Any = "auto",
                 estimate_interval_s: float = 5.0, codecarbon: bool = True, cooldown_s: float = 0.0):
        self.device = torch.device(device)
        self.country, self.idle_seconds, self.sample_hz = country, float(idle_seconds), float(sample_hz)
        self.cooldown_s = float(cooldown_s)
        if self.sample_hz <= 0:
            raise ValueError(f"sample_hz = {sample_hz}: must be > 0")
        self.output_dir = output_dir
        self.powercap_root, self._nvml_arg, self._gpu_arg = powercap_root, nvml, gpu
        self.estimate_interval_s, self.use_codecarbon = estimate_interval_s, codecarbon
        self.methods: dict[str, str] = {}  # component -> method (choose_methods)
        self.sources: list = []  # GpuCounter | GpuPower | RaplSource | Estimate
        self.edges: list[tuple[str, float]] = []
        self.epochs: list[dict] = []
        self.samples: list[tuple] = []  # (t, gpu_w, gpu_util, gpu_mem_mib, rapl cumulative dict)
        self.gpu: Gpu | None = None
        self.tracker = None
        self.estimate: Estimate | None = None
        self.sampler: Sampler | None = None
        self.memory = PeakMemory(self.device, self.sample_hz)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def curves(self) -> dict[str, Curve]:
        """Cumulative energy per component, from whichever source measures it."""
        return {c: curve for s in self.sources for c, curve in s.curves.items()}

    # -- sources ---------------------------------------------------------------------------------
    def _open(self) -> None:
        want = self._gpu_arg if self._gpu_arg != "auto" else (self.device if self.device.type == "cuda" else None)
        self.gpu = open_gpu(self._nvml_arg, want) if want is not None else None
        rapl = Rapl(self.powercap_root)
        if self.use_codecarbon:
            outdir = self.output_dir or tempfile.mkdtemp(prefix="bpfree-cc-")
            try:
                self.tracker = codecarbon_tracker(self.country, outdir, self.estimate_interval_s)
            except Exception as e:  # an estimate is missing, not zero
                logging.getLogger(__name__).warning("CodeCarbon unavailable: %s", e)
        self.methods = choose_methods(want is not None, self.gpu, rapl.components, self.tracker is not None)
        if self.methods.get("gpu") == "nvml-counter":
            self.sources.append(GpuCounter(self.gpu))
        elif self.methods.get("gpu") == "nvml-power":
            self.sources.append(GpuPower(self.gpu))
        if rapl.zones:
            self.sources.append(RaplSource(rapl))
        if self.tracker is not None:
            self.estimate = Estimate(self.tracker, [c for c, m in self.methods.items() if m == "estimate"])
            self.sources.append(self.estimate)

    def _sample(self, edge: bool = False) -> float:
        """Read every source once (under the lock) and return the time of the reading. An edge
        reads the GPU's power only where power is its method, and keeps no sample."""
        with self._lock:
            t = time.perf_counter()
            row: dict[str, Any] = {"gpu_w": None, "rapl": None}
            if self.gpu is not None and self.gpu.power and (not edge or self.methods.get("gpu") == "nvml-power"):
                row["gpu_w"] = Gpu.attempt(self.gpu.power_w)
            for s in self.sources:
                s.read(t, edge, row)
            if not edge:
                self.memory.sample()
                util, mem = (self.gpu.util_pct(), self.gpu.memory_mib()) if self.gpu is not None else (None, None)
                self.samples.append((t, row["gpu_w"], util, mem, row["rapl"]))
            return t

    def _sampler_period(self) -> float:
        """1 / sample_hz where there is something to sample (GPU, RAPL, RSS without VmHWM); else
        the sampler only drives CodeCarbon: waking at 10 Hz for nothing costs GIL hand-offs that,
        on a loaded machine, showed as a few % of a tiny epoch's wall time."""
        if (self.gpu is not None or any(isinstance(s, RaplSource) for s in self.sources) or not self.memory.hwm
                or self.estimate is None or not self.estimate.driven):
            return 1.0 / self.sample_hz
        return self.estimate_interval_s

    def _edge(self, name: str) -> float:
        t = self._sample(edge=True)
        self.edges.append((name, t))
        return t

    # -- window ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Pause `cooldown_s` (the previous run's heat fades), open the sources, measure the idle
        baseline (idle_seconds > 0), then open the window."""
        if self.cooldown_s > 0:
            time.sleep(self.cooldown_s)
        self._open()
        if self.estimate is not None:
            self.estimate.start()
        self.memory.hwm = reset_peak_rss()  # reset again at the window start; here: is it supported?
        self._sample()
        self.sampler = Sampler(self._sample, self._sampler_period(), self.estimate, self.estimate_interval_s)
        self.sampler.start()
        if self.idle_seconds > 0:
            sync(self.device)
            self._edge("idle_start")
            time.sleep(self.idle_seconds)
            if self.tracker is not None:
                self.tracker.measure_now()  # close CodeCarbon's interval at the end of the idle phase
            self._edge("idle_end")
        gc.collect()  # CodeCarbon's set-up leaves garbage: collect it before, not inside, the window
        self.memory.open()
        sync(self.device)
        self._t0 = self._t_mark = self._edge("start")

    def mark(self, refresh: bool = False) -> dict:
        """Close an epoch: seconds since the previous mark and since the window opened, provisional
        joules of the epoch (total and `energy_<component>_j`) and `window_j` (per component, since
        the window opened; GPU board energy as `board`). Final per-epoch values, with estimates
        apportioned over CodeCarbon's readings, are in `self.epochs` after stop. `refresh`: take a
        CodeCarbon reading first (~5-25 ms), so that estimates are not extrapolated; for the marks a
        checkpoint keeps."""
        sync(self.device)
        if refresh and self.estimate is not None and self.estimate.driven:
            self.tracker.measure_now()
        t = self._edge("mark")
        if self.estimate is not None:
            self.estimate.collect()
        prev, self._t_mark = self._t_mark, t
        curves = self.curves
        comps = {c: energy_between(curves.get(c), prev, t) for c in self.methods}
        known = [v for v in comps.values() if v is not None]
        window = {c: energy_between(curves.get(c), self._t0, t) for c in self.methods}
        if self.gpu is not None and self.gpu.power:
            window["board"] = board_energy([(ts, w) for ts, w, *_ in self.samples if self._t0 <= ts <= t
                                            and w is not None], min(self.sample_hz, ORIGINAL_STUDY_HZ))[0]
        return {"seconds": t - prev, "elapsed_s": t - self._t0, "energy_j": sum(known) if known else None,
                **{f"energy_{c}_j": v for c, v in comps.items()}, "window_j": window}

    def stop(self) -> dict:
        """Close the window and return every scalar the run records (see docs/metering.md)."""
        sync(self.device)
        t_end = self._edge("stop")
        peak = self.memory.result()
        self._halt()
        if self.estimate is not None:
            self.estimate.collect()
        return self._result(t_end, peak)

    def close(self) -> None:
        """Stop the sampler and CodeCarbon (idempotent; for error paths)."""
        self._halt()

    def _halt(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.sampler is not None:
            self.sampler.stop()
        if self.tracker is not None:
            self.tracker.stop()  # takes a final reading after the stop edge

    # -- results ---------------------------------------------------------------------------------
    def _result(self, t_end: float, peak: dict) -> dict:
        seconds, edges = t_end - self._t0, dict(self.edges)
        idle = (edges["idle_start"], edges["idle_end"]) if "idle_start" in edges and "idle_end" in edges else None
        comps = component_energy(self.curves, self.methods, self._t0, t_end, idle)
        known = [v for v in comps.values() if v["j"] is not None]
        energy = sum(v["j"] for v in known) if known else None
        label = method_label({c: v["method"] for c, v in comps.items()})
        idle_ws = [v["idle_w"] for v in known]
        idle_w = sum(idle_ws) if idle_ws and None not in idle_ws else None
        out: dict[str, Any] = {
            "train_time_s": seconds, "energy_j": energy, "energy_method": label, "energy_components": comps,
            "idle_power_w": idle_w, "idle_seconds": idle[1] - idle[0] if idle else None,
            "energy_dynamic_j": energy - idle_w * seconds if idle_w is not None and energy is not None else None,
            "idle_note": None if idle else "no idle baseline (protocol.metering.idle_seconds = 0)",
        }
        for c, v in comps.items():
            out[f"energy_{c}_j"], out[f"energy_{c}_method"] = v["j"], v["method"]
        out.update(emissions(getattr(self.tracker, "final_emissions_data", None), energy, label, self.country))
        out.update(peak)
        out.update(gpu_summary(self.samples, self.gpu, self._t0, t_end, self.sample_hz))
        out.update(board_summary(self.samples, self._t0, t_end, self.sample_hz, self.gpu, self.device.type == "cuda"))
        n_power = sum(1 for t, w, *_ in self.samples if self._t0 <= t and w is not None)
        has_board = self.gpu is not None and self.gpu.power
        out["energy_window_warning"] = window_warning(
            comps, seconds, n_power if self.methods.get("gpu") == "nvml-power" else None,
            out["energy_board_samples"] if has_board else None)
        out["cooldown_s"] = self.cooldown_s
        out["meter_sample_hz"] = 1.0 / self.sampler.period
        out["meter_samples"] = len(self.samples)
        self.epochs = epoch_records(self.curves, self.methods, self._t0, [t for n, t in self.edges if n == "mark"])
        return out

    def trace_rows(self) -> list[dict]:
        """The power trace (see `trace_rows`)."""
        return trace_rows(self.samples, self._t0, dict(self.edges).get("idle_start"))

