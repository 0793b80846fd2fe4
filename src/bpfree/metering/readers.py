"""The readers, one per source: RAPL (powercap `energy_uj` counters), NVML (the GPU's energy
counter, power, utilisation and memory) and CodeCarbon (its offline tracker, and the check of a
country code)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import torch

from bpfree import io
from bpfree.device import cpu_model, load_nvml, nvml_handle, text
from bpfree.errors import FileError
from bpfree.metering.curves import COMPONENTS, MIB

POWERCAP = Path("/sys/class/powercap")


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

def cache_cpu_detection(cache_dir: str | Path | None = None) -> Path | None:
    """Make py-cpuinfo's `get_cpu_info`, which CodeCarbon calls to find the CPU model (hence the
    power of its estimate), answer from a per-machine file: the detection runs a subprocess,
    about 1.2 s of every final run, and its answer is the machine's. The file
    (`<cache_dir>/cpuinfo-<key>.json`; default $BPFREE_CACHE_DIR, else ~/.cache/bpfree) is keyed
    by the host name and the CPU model (`device.cpu_model`), so a home shared by a cluster's nodes keeps
    one file per node. The first run on a machine detects and stores; a file that cannot be read or
    written is only a detection paid again. Returns the file (None: py-cpuinfo absent)."""
    try:
        import cpuinfo
    except ImportError:
        return None
    folder = Path(cache_dir or os.environ.get("BPFREE_CACHE_DIR") or Path.home() / ".cache" / "bpfree")
    key = hashlib.sha256(f"{socket.gethostname()}|{cpu_model()}".encode()).hexdigest()[:16]
    path = folder / f"cpuinfo-{key}.json"
    if getattr(cpuinfo.get_cpu_info, "bpfree_cache", None) == path:
        return path
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        info = cpuinfo.get_cpu_info()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            io.write_json(path, info)
        except (OSError, TypeError, ValueError, FileError):
            pass

    def get_cpu_info() -> dict:
        return dict(info)

    get_cpu_info.bpfree_cache = path
    cpuinfo.get_cpu_info = get_cpu_info
    return path


def codecarbon_tracker(country: str, output_dir: str, interval_s: float = 1.0) -> Any:
    """CodeCarbon's offline tracker (no network), recording after each of its measurements the
    cumulative CPU, RAM and GPU energy of its power model, so that marks never pay for a measurement.
    Relies on CodeCarbon 3.3 internals (checked by tests/test_metering.py)."""
    os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    from codecarbon import OfflineEmissionsTracker

    cache_cpu_detection()

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
