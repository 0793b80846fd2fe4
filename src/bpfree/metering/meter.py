"""The meter: the background sampler and `Meter`, which opens the window, reads the sources and
puts the summaries together (see bpfree.metering)."""
from __future__ import annotations

import gc
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bpfree.device import sync
from bpfree.metering.baseline import Idle, IdleBaseline, idle_record
from bpfree.metering.curves import ORIGINAL_STUDY_HZ, Curve, Exclusions, board_energy, energy_between
from bpfree.metering.memory import PeakMemory, reset_peak_rss
from bpfree.metering.methods import Estimate, GpuCounter, GpuPower, RaplSource, choose_methods
from bpfree.metering.readers import POWERCAP, Gpu, Rapl, codecarbon_tracker, open_gpu
from bpfree.metering.summary import (board_summary, emissions, energy_record, epoch_records, gpu_summary, idle_watts,
                                     trace_rows, window_warning)
from bpfree.protocol import METERING  # the defaults of protocol.metering (the schema's)


class Sampler:
    """A daemon thread calling `read()` every `period` seconds and, where the meter drives
    CodeCarbon (`estimate`), its measurement every `estimate_interval_s`. A failing reading is
    logged and shows as a missing sample; it never stops the run."""

    def __init__(self, read: Callable[[], Any], period: float, estimate: Estimate | None = None,
                 estimate_interval_s: float = METERING["estimate_interval_s"]):
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
                logging.getLogger("bpfree.metering").warning("meter sample failed: %s", e)


class Meter:
    """One measurement window (see the docstring of bpfree.metering): opens the energy sources that
    `choose_methods` picks, runs the Sampler, marks edges, and summarises with the functions of
    bpfree.metering.summary.

    `powercap_root` (None: no RAPL) and `nvml` ("auto": import pynvml; None: no NVML; or a stand-in
    module) are injectable for tests; `gpu` is the NVML device to meter ("auto": the torch device's
    GPU when `device` is CUDA; an int: that NVML index; None: no GPU component). `idle_baseline`:
    where the host's and device's idle baseline is stored and reused from (None: always measured)."""

    def __init__(self, device: torch.device | str, country: str = METERING["country_iso_code"],
                 idle_seconds: float = METERING["idle_seconds"], sample_hz: float = METERING["sample_hz"],
                 output_dir: str | None = None, *, powercap_root: str | Path | None = POWERCAP, nvml: Any = "auto",
                 gpu: Any = "auto", estimate_interval_s: float = METERING["estimate_interval_s"],
                 codecarbon: bool = True, cooldown_s: float = METERING["cooldown_s"],
                 idle_baseline: IdleBaseline | None = None):
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
        self.edges, self.epochs = [], []  # (name, t); the final per-epoch records (after stop)
        self.samples: list[tuple] = []  # (t, gpu_w, gpu_util, gpu_mem_mib, rapl cumulative dict)
        self.gpu, self.tracker, self.estimate, self.sampler = None, None, None, None  # Gpu, CodeCarbon, Estimate
        self.excluded = Exclusions(lambda: self._edge("exclude"))  # diagnostics: not the algorithm's (during())
        self.memory = PeakMemory(self.device, self.sample_hz)
        self.idle_baseline, self.idle = idle_baseline, None  # where baselines are kept; this run's (Idle)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def curves(self) -> dict[str, Curve]:
        """Cumulative energy per component, from whichever source measures it (excluded intervals out)."""
        return self.excluded.wrap({c: curve for s in self.sources for c, curve in s.curves.items()})

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
                logging.getLogger("bpfree.metering").warning("CodeCarbon unavailable: %s", e)
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
        self.idle = self._idle() if self.idle_seconds > 0 else None
        gc.collect()  # CodeCarbon's set-up leaves garbage: collect it before, not inside, the window
        self.memory.open()
        sync(self.device)
        self._t0 = self._t_mark = self._edge("start")

    def _idle(self) -> Idle:
        """The idle baseline: one of this host and device that a recent run stored, where it can be
        reused (bpfree.metering.baseline), else measured now for idle_seconds (and stored)."""
        signature = {"methods": self.methods, "gpu": self.gpu.name if self.gpu is not None else None,
                     "rapl": [d["zone"] for s in self.sources if isinstance(s, RaplSource) for d in s.rapl.zones]}
        return self.idle_baseline.obtain(signature, self._measure_idle) if self.idle_baseline else self._measure_idle()

    def _measure_idle(self) -> Idle:
        sync(self.device)
        a = self._edge("idle_start")
        time.sleep(self.idle_seconds)
        if self.tracker is not None:
            self.tracker.measure_now()  # close CodeCarbon's interval at the end of the idle phase
        b = self._edge("idle_end")
        if self.estimate is not None:
            self.estimate.collect()
        return Idle(idle_watts(self.curves, self.methods, a, b), b - a)

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
        cut = self.excluded.seconds  # diagnostics: not the epoch's
        return {"seconds": t - prev - cut(prev, t), "elapsed_s": t - self._t0 - cut(self._t0, t), "energy_j":
                sum(known) if known else None, **{f"energy_{c}_j": v for c, v in comps.items()}, "window_j": window}

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
        out = energy_record(self.curves, self.methods, self._t0, t_end, self.idle.w if self.idle else None,
                            self.excluded.seconds(self._t0, t_end))
        out.update(idle_record(self.idle), **peak, **emissions(getattr(self.tracker, "final_emissions_data", None),
                                                               out["energy_j"], out["energy_method"], self.country))
        out.update(gpu_summary(self.samples, self.gpu, self._t0, t_end, self.sample_hz))
        out.update(board_summary(self.samples, self._t0, t_end, self.sample_hz, self.gpu, self.device.type == "cuda"))
        n_power = sum(1 for t, w, *_ in self.samples if self._t0 <= t and w is not None)
        has_board = self.gpu is not None and self.gpu.power
        out["energy_window_warning"] = window_warning(
            out["energy_components"], out["train_time_s"],
            n_power if self.methods.get("gpu") == "nvml-power" else None,
            out["energy_board_samples"] if has_board else None)
        out.update(cooldown_s=self.cooldown_s, meter_sample_hz=1.0 / self.sampler.period,
                   meter_samples=len(self.samples))
        self.epochs = epoch_records(self.curves, self.methods, self._t0, [t for n, t in self.edges if n == "mark"],
                                    self.excluded.seconds)
        return out

    def trace_rows(self) -> list[dict]:
        """The power trace (see `trace_rows`)."""
        return trace_rows(self.samples, self._t0, dict(self.edges).get("idle_start"))
