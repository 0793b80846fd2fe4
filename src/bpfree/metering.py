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
`src/utils/monitoring.py`; shared/spec/field-algorithms.md, last section). Without a GPU power
reading it is `None`, "unavailable". A window too short to trust (fewer than 60 power samples, as
MLPerf's power rules ask, or under 1 s of counter readings) is named in `energy_window_warning`.

Every source becomes a cumulative-energy curve (time, joules); the energy between two edges is the
difference of the curve at those times. Counters are read at each edge, so their edge values are
exact; power samples and CodeCarbon readings are interpolated linearly, i.e. apportioned by time.
"""
from __future__ import annotations

import bisect
import gc
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

KWH = 3.6e6  # joules per kWh
MIB = 2**20
POWERCAP = Path("/sys/class/powercap")
COMPONENTS = ("gpu", "cpu", "dram")
METHODS = ("nvml-counter", "nvml-power", "rapl", "estimate")
UNAVAILABLE = "unavailable"
ORIGINAL_STUDY_HZ = 5.0  # the original study's power polling rate (one reading per 0.2 s)
MIN_POWER_SAMPLES = 60  # MLPerf power rules: fewer samples than this in a window is too few
MIN_COUNTER_S = 1.0  # counters (NVML energy, RAPL) update every few to tens of ms: under 1 s is too short


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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

def load_nvml(nvml: Any = "auto") -> Any:
    """The initialised pynvml module (package nvidia-ml-py), a stand-in passed by tests, or None
    where the module or the driver is absent."""
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


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def nvml_handle(nvml: Any, device: torch.device | int) -> Any:
    """The NVML handle of a torch device (by UUID: CUDA_VISIBLE_DEVICES renumbers torch devices)."""
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


class Gpu:
    """NVML readings of one GPU; `counter` says whether the total-energy counter exists."""

    def __init__(self, nvml: Any, device: torch.device | int):
        self.nvml = nvml
        self.handle = nvml_handle(nvml, device)
        self.name = _text(nvml.nvmlDeviceGetName(self.handle))
        self.counter = self._try(self.energy_j) is not None
        self.power = self._try(self.power_w) is not None

    @staticmethod
    def _try(fn):
        try:
            return fn()
        except Exception:
            return None

    def energy_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3

    def power_w(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3

    def util_pct(self) -> float | None:
        return self._try(lambda: float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))

    def memory_mib(self) -> float | None:
        return self._try(lambda: self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / MIB)


# ---- CodeCarbon -----------------------------------------------------------------------------------

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


# ---- the meter ------------------------------------------------------------------------------------

class Meter:
    """One measurement window (see the module docstring).

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
        self.curves: dict[str, Curve] = {}
        self.methods: dict[str, str] = {}
        self.edges: list[tuple[str, float]] = []
        self.epochs: list[dict] = []
        self._samples: list[tuple] = []  # (t, gpu_w, gpu_util, gpu_mem_mib, rapl cumulative dict)
        self._lock = threading.Lock()
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self.gpu: Gpu | None = None
        self.rapl: Rapl | None = None
        self.tracker = None
        self._closed = False
        self._rss_hwm = False
        self._period = 1.0 / self.sample_hz
        self._rss_peak_sampled = 0.0
        self._rss_start = float("nan")
        self._snap_i = 0
        self._drive_tracker = False

    # -- sources ---------------------------------------------------------------------------------
    def _open(self) -> None:
        want_gpu = self._gpu_arg if self._gpu_arg != "auto" else (self.device if self.device.type == "cuda" else None)
        if want_gpu is not None:
            nvml = load_nvml(self._nvml_arg)
            if nvml is not None:
                try:
                    self.gpu = Gpu(nvml, want_gpu)
                except Exception:
                    self.gpu = None
            if self.gpu and self.gpu.counter:
                self.methods["gpu"], self.curves["gpu"] = "nvml-counter", Curve()
            elif self.gpu and self.gpu.power:
                self.methods["gpu"], self.curves["gpu"] = "nvml-power", PowerCurve()
            else:  # CodeCarbon's GPU figure needs NVML too: it would be a silent 0 J
                self.methods["gpu"] = UNAVAILABLE
        self.rapl = Rapl(self.powercap_root)
        for c in self.rapl.components:
            self.methods[c], self.curves[c] = "rapl", Curve()
        for c in ("cpu", "dram"):
            self.methods.setdefault(c, "estimate")
        if self.use_codecarbon:
            outdir = self.output_dir or tempfile.mkdtemp(prefix="bpfree-cc-")
            try:
                self.tracker = codecarbon_tracker(self.country, outdir, self.estimate_interval_s)
            except Exception as e:  # an estimate is missing, not zero
                logging.getLogger(__name__).warning("CodeCarbon unavailable: %s", e)
                self.tracker = None
        for c, m in self.methods.items():
            if m == "estimate":
                if self.tracker is None:
                    self.methods[c] = UNAVAILABLE
                else:
                    self.curves[c] = Curve()

    def _sample(self, edge: bool = False) -> float:
        """Read every power source once (under the lock) and return the time of the reading."""
        with self._lock:
            t = time.perf_counter()
            gpu_w = util = mem = None
            if self.gpu is not None:
                if self.methods.get("gpu") == "nvml-counter" and edge:
                    if (e := Gpu._try(self.gpu.energy_j)) is not None:  # a failed read: interpolated instead
                        self.curves["gpu"].add(t, e)
                # an edge reads the power only where power is the method (nvml-power)
                if self.gpu.power and (not edge or self.methods.get("gpu") == "nvml-power"):
                    gpu_w = Gpu._try(self.gpu.power_w)
                    if gpu_w is not None and self.methods.get("gpu") == "nvml-power":
                        self.curves["gpu"].add_power(t, gpu_w)
                if not edge:
                    util, mem = self.gpu.util_pct(), self.gpu.memory_mib()
            rapl = None
            if self.rapl is not None and self.rapl.zones:
                rapl = self.rapl.read()
                for c, e in rapl.items():
                    self.curves[c].add(t, e)
            if not edge:
                if not self._rss_hwm:
                    self._rss_peak_sampled = max(self._rss_peak_sampled, rss_mib())
                self._samples.append((t, gpu_w, util, mem, rapl))
            return t

    def _sampler_period(self) -> float:
        """1 / sample_hz where there is something to sample (GPU, RAPL, RSS without VmHWM); else
        the sampler only drives CodeCarbon: waking at 10 Hz for nothing costs GIL hand-offs that,
        on a loaded machine, showed as a few % of a tiny epoch's wall time."""
        if (self.gpu is not None or (self.rapl is not None and self.rapl.zones) or not self._rss_hwm
                or not self._drive_tracker):
            return 1.0 / self.sample_hz
        return self.estimate_interval_s

    def _run_sampler(self) -> None:
        period = self._period = self._sampler_period()
        next_estimate = time.perf_counter() + self.estimate_interval_s
        while not self._stop_evt.wait(period):
            try:
                self._sample()
                now = time.perf_counter()
                if self._drive_tracker and now >= next_estimate - 0.5 * period:  # slack: wakes are not exact
                    self.tracker.measure_now()
                    next_estimate = now + self.estimate_interval_s
            except Exception as e:  # a failing reading must not kill the run; it shows as missing samples
                logging.getLogger(__name__).warning("meter sample failed: %s", e)

    def _edge(self, name: str) -> float:
        t = self._sample(edge=True)
        self.edges.append((name, t))
        return t

    def _estimate_snapshot(self) -> None:
        """Copy CodeCarbon's new readings into the estimate curves (cheap: no measurement)."""
        if self.tracker is None:
            return
        with self.tracker.bp_lock:
            snaps = self.tracker.snapshots[self._snap_i:]
        self._snap_i += len(snaps)
        for c, m in self.methods.items():
            if m == "estimate":
                for t, tot in snaps:
                    self.curves[c].add(t, tot[c])

    # -- window ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Pause `cooldown_s` (the previous run's heat fades), open the sources, measure the idle
        baseline (idle_seconds > 0), then open the window."""
        if self.cooldown_s > 0:
            time.sleep(self.cooldown_s)
        self._open()
        if self.tracker is not None:
            self.tracker.start()
            self._drive_tracker = self.tracker.take_over()
        self._rss_hwm = reset_peak_rss()  # reset again at the window start; here: is it supported?
        self._sample()
        self._thread = threading.Thread(target=self._run_sampler, name="bpfree-meter", daemon=True)
        self._thread.start()
        if self.idle_seconds > 0:
            sync(self.device)
            self._edge("idle_start")
            time.sleep(self.idle_seconds)
            if self.tracker is not None:
                self.tracker.measure_now()  # close CodeCarbon's interval at the end of the idle phase
            self._edge("idle_end")
        gc.collect()  # CodeCarbon's set-up leaves garbage: collect it before, not inside, the window
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._rss_start = rss_mib()
        self._rss_hwm = reset_peak_rss()
        self._rss_peak_sampled = self._rss_start
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
        if refresh and self._drive_tracker:
            self.tracker.measure_now()
        t = self._edge("mark")
        self._estimate_snapshot()
        prev = self._t_mark
        self._t_mark = t
        comps = {c: self._between(c, prev, t) for c in self.methods}
        known = [v for v in comps.values() if v is not None]
        window = {c: self._between(c, self._t0, t) for c in self.methods}
        if self.gpu is not None and self.gpu.power:
            window["board"] = board_energy([(ts, w) for ts, w, *_ in self._samples if self._t0 <= ts <= t
                                            and w is not None], min(self.sample_hz, ORIGINAL_STUDY_HZ))[0]
        return {"seconds": t - prev, "elapsed_s": t - self._t0, "energy_j": sum(known) if known else None,
                **{f"energy_{c}_j": v for c, v in comps.items()}, "window_j": window}

    def _between(self, comp: str, a: float, b: float) -> float | None:
        curve = self.curves.get(comp)
        if curve is None or not curve.t:
            return None
        ea, eb = curve.at(a), curve.at(b)
        return None if ea is None or eb is None else eb - ea

    def stop(self) -> dict:
        """Close the window and return every scalar the run records (see docs/metering.md)."""
        sync(self.device)
        t_end = self._edge("stop")
        peak = self._peak_memory()
        self._halt()
        self._estimate_snapshot()
        return self._result(t_end, peak)

    def close(self) -> None:
        """Stop the sampler and CodeCarbon (idempotent; for error paths)."""
        self._halt()

    def _halt(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.tracker is not None:
            self.tracker.stop()  # takes a final reading after the stop edge

    # -- results ---------------------------------------------------------------------------------
    def _peak_memory(self) -> dict:
        if self.device.type == "cuda":
            out = {"peak_memory_mib": torch.cuda.max_memory_allocated(self.device) / MIB,
                   "peak_memory_method": "torch.cuda.max_memory_allocated (process-local, reset at window start)"}
        elif self._rss_hwm and (hwm := _status_kib("VmHWM")) is not None:
            out = {"peak_memory_mib": hwm / 1024,
                   "peak_memory_method": "VmHWM (kernel peak resident set of the process, reset at window start)"}
        else:
            self._rss_peak_sampled = max(self._rss_peak_sampled, rss_mib())
            out = {"peak_memory_mib": self._rss_peak_sampled,
                   "peak_memory_method": f"max resident set sampled at {self.sample_hz:g} Hz during the window"}
        out["rss_at_start_mib"] = self._rss_start
        return out

    def _method_label(self, methods: Iterable[str]) -> str:
        ms = dict(methods)
        if len(set(ms.values())) == 1:
            return next(iter(ms.values()))
        return "mixed: " + ", ".join(f"{c}={ms[c]}" for c in COMPONENTS if c in ms)

    def _result(self, t_end: float, peak: dict) -> dict:
        seconds = t_end - self._t0
        edges = dict(self.edges)
        idle = ("idle_start" in edges and "idle_end" in edges)
        idle_s = edges["idle_end"] - edges["idle_start"] if idle else None
        comps: dict[str, dict] = {}
        for c in (c for c in COMPONENTS if c in self.methods):
            j = self._between(c, self._t0, t_end)
            method = self.methods[c] if j is not None else UNAVAILABLE
            idle_w = None
            if idle and j is not None:
                ij = self._between(c, edges["idle_start"], edges["idle_end"])
                idle_w = ij / idle_s if ij is not None and idle_s > 0 else None
            comps[c] = {"j": j, "method": method, "idle_w": idle_w,
                        "dynamic_j": j - idle_w * seconds if idle_w is not None else None}
        known = {c: v for c, v in comps.items() if v["j"] is not None}
        energy = sum(v["j"] for v in known.values()) if known else None
        label = self._method_label((c, v["method"]) for c, v in comps.items())
        idle_ws = [v["idle_w"] for v in known.values()]
        idle_w = sum(idle_ws) if idle_ws and None not in idle_ws else None
        out: dict[str, Any] = {
            "train_time_s": seconds,
            "energy_j": energy,
            "energy_method": label,
            "energy_components": comps,
            "idle_power_w": idle_w,
            "idle_seconds": idle_s,
            "energy_dynamic_j": energy - idle_w * seconds if idle_w is not None and energy is not None else None,
            "idle_note": None if idle else "no idle baseline (protocol.metering.idle_seconds = 0)",
        }
        for c, v in comps.items():
            out[f"energy_{c}_j"], out[f"energy_{c}_method"] = v["j"], v["method"]
        out.update(self._emissions(energy, label))
        out.update(peak)
        out.update(self._gpu_summary(t_end))
        out.update(self._board(t_end))
        out["energy_window_warning"] = self._window_warning(comps, seconds, out["energy_board_samples"])
        out["cooldown_s"] = self.cooldown_s
        out["meter_sample_hz"] = 1.0 / self._period
        out["meter_samples"] = len(self._samples)
        self.epochs = self._epoch_records()
        return out

    def _emissions(self, energy: float | None, label: str) -> dict:
        d = getattr(self.tracker, "final_emissions_data", None) if self.tracker is not None else None
        if d is None or energy is None or not d.energy_consumed:
            return {"emissions_kg": None, "carbon_intensity_g_per_kwh": None,
                    "emissions_method": "unavailable (CodeCarbon did not report)"}
        kg_per_kwh = d.emissions / d.energy_consumed  # the offline country intensity
        return {"emissions_kg": energy / KWH * kg_per_kwh, "carbon_intensity_g_per_kwh": 1e3 * kg_per_kwh,
                "emissions_method": f"derived: energy_j ({label}) x CodeCarbon offline carbon intensity of "
                                    f"{self.country}"}

    def _gpu_summary(self, t_end: float) -> dict:
        window = [s for s in self._samples if self._t0 <= s[0] <= t_end]
        has_power = any(s[1] is not None for s in self._samples) or any(s[4] for s in self._samples)
        out: dict[str, Any] = {
            "power_trace": "power_trace.csv" if has_power else None,
            "power_trace_note": None if has_power else "no power reading on this machine (no NVML, no readable RAPL)",
        }
        if self.gpu is not None:
            utils = [s[2] for s in window if s[2] is not None]
            mems = [s[3] for s in window if s[3] is not None]
            out.update({
                "gpu_name": self.gpu.name,
                "gpu_util_mean_pct": sum(utils) / len(utils) if utils else None,
                "gpu_device_memory_peak_mib": max(mems) if mems else None,
                "gpu_device_memory_method": f"NVML memory used, device-wide incl. CUDA context, max of samples "
                                            f"at {self.sample_hz:g} Hz",
            })
        return out

    def _board(self, t_end: float) -> dict:
        """energy_board_j: the original study's quantity (see the module docstring)."""
        if self.gpu is None or not self.gpu.power:
            why = "no GPU power reading (NVML)" if self.gpu is not None or self.device.type == "cuda" \
                else "no GPU: a CPU-only run"
            return {"energy_board_j": None, "energy_board_samples": 0,
                    "energy_board_method": f"{UNAVAILABLE}: {why}"}
        rate = min(self.sample_hz, ORIGINAL_STUDY_HZ)
        j, n = board_energy([(t, w) for t, w, *_ in self._samples if self._t0 <= t <= t_end and w is not None], rate)
        return {"energy_board_j": j, "energy_board_samples": n,
                "energy_board_method": f"nvml-power at {rate:g} Hz, trapezoid, GPU board only, no idle subtraction "
                                       "(the original study's method)" if j is not None else
                                       f"{UNAVAILABLE}: fewer than 2 power samples in the window"}

    def _window_warning(self, comps: dict, seconds: float, board_samples: int) -> str | None:
        """Which figures come from a window too short to trust (None: none)."""
        short = []
        n_power = sum(1 for t, w, *_ in self._samples if self._t0 <= t and w is not None)
        if self.methods.get("gpu") == "nvml-power" and n_power < MIN_POWER_SAMPLES:
            short.append(f"gpu energy from {n_power} power samples")
        if self.gpu is not None and self.gpu.power and board_samples < MIN_POWER_SAMPLES:
            short.append(f"energy_board_j from {board_samples} power samples")
        if seconds < MIN_COUNTER_S:
            short += [f"{c} energy from {seconds:.2f} s of {v['method']} readings" for c, v in comps.items()
                      if v["method"] in ("nvml-counter", "rapl")]
        if not short:
            return None
        return (f"too short to trust: {'; '.join(short)} (need >= {MIN_POWER_SAMPLES} power samples, "
                f"as MLPerf's power rules ask, or >= {MIN_COUNTER_S:g} s of counter readings)")

    def _epoch_records(self) -> list[dict]:
        """Per mark: seconds, elapsed, joules (total and per component) and cumulative joules."""
        marks = [t for n, t in self.edges if n == "mark"]
        rows, prev, cum = [], self._t0, 0.0
        for t in marks:
            row: dict[str, Any] = {"elapsed_s": t - self._t0, "window_s": t - prev}
            total, ok = 0.0, False
            for c in self.methods:
                j = self._between(c, prev, t)
                row[f"energy_{c}_j"] = j
                if j is not None:
                    total, ok = total + j, True
            row["energy_j"] = total if ok else None
            cum += total
            row["cum_energy_j"] = cum if ok else None
            rows.append(row)
            prev = t
        return rows

    def trace_rows(self) -> list[dict]:
        """The power trace: one row per sampler reading (time from the first sample; phase setup,
        idle or train; GPU power, utilisation and device memory; RAPL power from counter differences)."""
        if not self._samples:
            return []
        edges = dict(self.edges)
        t_first = self._samples[0][0]
        rows, prev = [], None
        for t, gpu_w, util, mem, rapl in self._samples:
            phase = "train" if t >= self._t0 else ("idle" if "idle_start" in edges and t >= edges["idle_start"] else "setup")
            row = {"t_s": t - t_first, "phase": phase, "gpu_w": gpu_w, "gpu_util_pct": util, "gpu_memory_mib": mem}
            if rapl:
                for c, e in rapl.items():
                    row[f"{c}_w"] = (e - prev[1][c]) / (t - prev[0]) if prev and t > prev[0] else None
                prev = (t, rapl)
            rows.append(row)
        return rows
