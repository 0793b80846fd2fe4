"""Energy, time and memory of a training phase, through one measurement-window API:

    meter = Meter(device, country="FRA")
    meter.start()
    ... meter.mark()   # after every epoch: seconds and joules since the previous mark
    result = meter.stop()

Every energy figure carries the method that produced it. On a machine without power counters the
only source is CodeCarbon's model, labelled `estimate`.
"""
from __future__ import annotations

import logging
import os
import resource
import tempfile
import time

import torch

KWH = 3.6e6  # joules per kWh


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Meter:
    def __init__(self, device: torch.device | str, country: str = "FRA", idle_seconds: float = 0.0,
                 sample_hz: float = 10.0, output_dir: str | None = None):
        self.device = torch.device(device)
        self.country, self.idle_seconds, self.sample_hz = country, idle_seconds, sample_hz
        self.output_dir = output_dir
        self._tracker = None
        self._t0 = self._t_mark = 0.0
        self._e_mark = 0.0

    # -- CodeCarbon (offline: no network) ------------------------------------------------------
    def _start_tracker(self) -> None:
        os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        from codecarbon import OfflineEmissionsTracker

        self._outdir = self.output_dir or tempfile.mkdtemp(prefix="bpfree-cc-")
        os.makedirs(self._outdir, exist_ok=True)  # CodeCarbon fails silently without it
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=self.country, output_dir=self._outdir, save_to_file=False,
            log_level="error", tracking_mode="process", measure_power_secs=1)
        self._tracker.start()

    def _tracker_kwh(self) -> float:
        self._tracker._measure_power_and_energy()  # no public per-interval reading
        return float(self._tracker._total_energy.kWh)

    # -- window --------------------------------------------------------------------------------
    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start_tracker()
        sync(self.device)
        self._t0 = self._t_mark = time.perf_counter()
        self._e_mark = 0.0

    def mark(self) -> dict:
        """Seconds and joules since the previous mark (or start)."""
        sync(self.device)
        now = time.perf_counter()
        kwh = self._tracker_kwh()
        out = {"seconds": now - self._t_mark, "energy_j": (kwh - self._e_mark) * KWH}
        self._t_mark, self._e_mark = now, kwh
        return out

    def stop(self) -> dict:
        sync(self.device)
        seconds = time.perf_counter() - self._t0
        self._tracker.stop()
        d = self._tracker.final_emissions_data
        comps = {"cpu": d.cpu_energy * KWH, "dram": d.ram_energy * KWH}
        if self.device.type == "cuda":
            comps["gpu"] = d.gpu_energy * KWH
        energy = sum(comps.values())
        return {
            "train_time_s": seconds,
            "energy_j": energy,
            "energy_method": "estimate",
            "energy_components": {k: {"j": v, "method": "estimate"} for k, v in comps.items()},
            "emissions_kg": d.emissions,
            "emissions_method": f"codecarbon-offline ({self.country}), derived from the estimate",
            **peak_memory(self.device),
        }


def peak_memory(device: torch.device) -> dict:
    """Process-local peak memory: CUDA allocator peak on a GPU, peak resident set on a CPU."""
    if device.type == "cuda":
        return {"peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_memory_method": "torch.cuda.max_memory_allocated"}
    return {"peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_memory_method": "ru_maxrss (process peak resident set)"}
