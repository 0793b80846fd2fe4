"""The per-run summary: pure functions of the readings (energy per component and its method,
emissions, the GPU and board figures, a window too short to trust, per-epoch records, the power
trace)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bpfree.metering.curves import (COMPONENTS, KWH, ORIGINAL_STUDY_HZ, UNAVAILABLE, Curve, board_energy,
                                    energy_between)
from bpfree.metering.readers import Gpu

MIN_POWER_SAMPLES = 60  # MLPerf power rules: fewer samples than this in a window is too few
MIN_COUNTER_S = 1.0  # counters (NVML energy, RAPL) update every few to tens of ms: under 1 s is too short


# A sample is (t, gpu_w, gpu_util_pct, gpu_memory_mib, rapl cumulative joules by component or None).

def method_label(methods: dict[str, str]) -> str:
    """One label for the run: the common method, or `mixed: gpu=..., cpu=...`."""
    if len(set(methods.values())) == 1:
        return next(iter(methods.values()))
    return "mixed: " + ", ".join(f"{c}={methods[c]}" for c in COMPONENTS if c in methods)


def idle_watts(curves: dict[str, Curve], methods: dict[str, str], a: float, b: float) -> dict[str, float | None]:
    """Mean power (W) of each component between times a and b (the idle phase); None without readings."""
    out: dict[str, float | None] = {}
    for c in (c for c in COMPONENTS if c in methods):
        j = energy_between(curves.get(c), a, b)
        out[c] = j / (b - a) if j is not None and b - a > 0 else None
    return out


def component_energy(curves: dict[str, Curve], methods: dict[str, str], t0: float, t_end: float,
                     idle_w: dict[str, float | None] | None, excluded_s: float = 0.0) -> dict[str, dict]:
    """Per component: joules of the window, method (unavailable without readings), idle power
    (`idle_w`, W per component: measured before the window or reused, see `idle_watts`; None: no
    baseline) and the dynamic joules (the window's minus idle power x its length)."""
    out: dict[str, dict] = {}
    for c in (c for c in COMPONENTS if c in methods):
        j = energy_between(curves.get(c), t0, t_end)
        w = idle_w.get(c) if idle_w is not None and j is not None else None
        out[c] = {"j": j, "method": methods[c] if j is not None else UNAVAILABLE, "idle_w": w,
                  "dynamic_j": j - w * (t_end - t0 - excluded_s) if w is not None else None}
    return out


def energy_record(curves: dict[str, Curve], methods: dict[str, str], t0: float, t_end: float,
                  idle_w: dict[str, float | None] | None, excluded_s: float = 0.0) -> dict[str, Any]:
    """The window's time and energy: `train_time_s`, `energy_j` (sum of the known components),
    `energy_method`, `energy_components` (see `component_energy`), `idle_power_w` (None unless every
    known component has one), `energy_dynamic_j`, and `energy_<component>_j` and `_method`.
    `excluded_s`: seconds of the window that are not training (diagnostics, `diagnostics_s`; their
    energy is already out of `curves`, see curves.Exclusions)."""
    seconds = t_end - t0 - excluded_s
    comps = component_energy(curves, methods, t0, t_end, idle_w, excluded_s)
    known = [v for v in comps.values() if v["j"] is not None]
    energy = sum(v["j"] for v in known) if known else None
    idle_ws = [v["idle_w"] for v in known]
    idle = sum(idle_ws) if idle_ws and None not in idle_ws else None
    out = {"train_time_s": seconds, "energy_j": energy, "energy_method": method_label(
        {c: v["method"] for c, v in comps.items()}), "energy_components": comps, "idle_power_w": idle,
        "energy_dynamic_j": energy - idle * seconds if idle is not None and energy is not None else None,
        "diagnostics_s": excluded_s}
    for c, v in comps.items():
        out[f"energy_{c}_j"], out[f"energy_{c}_method"] = v["j"], v["method"]
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


def epoch_records(curves: dict[str, Curve], components: Iterable[str], t0: float, marks: list[float],
                  excluded=lambda a, b: 0.0) -> list[dict]:
    """Per mark: seconds, elapsed, joules (total and per component) and cumulative joules;
    `excluded(a, b)`: the seconds between a and b that are not training (curves.Exclusions.seconds)."""
    rows, prev, cum = [], t0, 0.0
    for t in marks:
        row: dict[str, Any] = {"elapsed_s": t - t0 - excluded(t0, t), "window_s": t - prev - excluded(prev, t)}
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
