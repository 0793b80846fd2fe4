"""A resumed run's totals: what its killed processes metered up to their last checkpoint (kept with
the checkpoint) added to this process's window, so that a final run's time and energy are the run's,
not its last process's. train.py hands the meter's figures through `Segments` and writes what comes
back."""
from __future__ import annotations

from bpfree.metering.curves import KWH


def add_window(a: dict, b: dict) -> dict:
    """Sum per component of two segments' joules; None where either is unknown."""
    return {c: None if a.get(c, 0.0) is None or b.get(c) is None else a.get(c, 0.0) + b[c] for c in b}


def window_energy(window_j: dict) -> float | None:
    """Total joules of the measured components (as the meter sums them); the board column is apart."""
    known = [v for c, v in window_j.items() if c != "board" and v is not None]
    return sum(known) if known else None


def with_earlier(measured: dict, earlier: dict) -> dict:
    """The meter's result (`Meter.stop`) with the killed processes' time and energy added: totals of
    the run. `earlier` as `Segments.earlier`."""
    out = dict(measured)
    t = out["train_time_s"] = earlier["train_time_s"] + measured["train_time_s"]
    comps = {}
    for c, v in measured["energy_components"].items():
        j = add_window(earlier["window_j"], {c: v["j"]})[c]
        comps[c] = {**v, "j": j, "dynamic_j": None if j is None or v["idle_w"] is None else j - v["idle_w"] * t}
        out[f"energy_{c}_j"] = j
    out["energy_components"] = comps
    out["energy_j"] = energy = window_energy({c: v["j"] for c, v in comps.items()})
    idle_w = measured["idle_power_w"]
    out["energy_dynamic_j"] = energy - idle_w * t if idle_w is not None and energy is not None else None
    if measured["emissions_kg"] is not None and energy is not None:
        out["emissions_kg"] = energy / KWH * measured["carbon_intensity_g_per_kwh"] / 1e3
    if measured["energy_board_j"] is not None:
        out["energy_board_j"] = add_window(earlier["window_j"], {"board": measured["energy_board_j"]})["board"]
    return out


class Segments:
    """The processes (segments) of one final run, seen from the current one. `earlier`: what the
    killed ones metered, as the checkpoint keeps it: {"train_time_s": seconds, "window_j": joules
    per component since their windows opened (the GPU board column as `board`), "segments": how
    many}; None or empty on a first start."""

    def __init__(self, earlier: dict | None = None):
        self.earlier = {"train_time_s": 0.0, "window_j": {}, "segments": 0, **(earlier or {})}
        self.segment = self.earlier["segments"] + 1  # this process's number

    @property
    def resumed(self) -> bool:
        return bool(self.earlier["segments"])

    @property
    def earlier_energy_j(self) -> float | None:
        return window_energy(self.earlier["window_j"])

    def provisional(self, mark: dict) -> tuple[dict, dict]:
        """A `Meter.mark` of this process as the run's: (the epoch record's fields: its joules,
        window_s, elapsed_s and cum_energy_j over every process; the checkpoint's `extra`, the
        `earlier` of the process that resumes from it)."""
        total = add_window(self.earlier["window_j"], mark["window_j"])
        elapsed = self.earlier["train_time_s"] + mark["elapsed_s"]
        rec = {**{k: v for k, v in mark.items() if k.startswith("energy_")}, "window_s": mark["seconds"],
               "elapsed_s": elapsed, "cum_energy_j": window_energy(total),
               "metered": f"provisional mark of process {self.segment}"}
        return rec, {"train_time_s": elapsed, "window_j": total, "segments": self.segment}

    def totals(self, measured: dict) -> dict:
        """`Meter.stop`'s result as the run's (unchanged on a first start)."""
        return with_earlier(measured, self.earlier) if self.resumed else measured

    def final_epochs(self, epochs: list[dict]) -> list[dict]:
        """`Meter.epochs` (this window's epochs, the last ones of the run) with elapsed_s and
        cum_energy_j counted from the run's start, marked final."""
        e0 = self.earlier_energy_j or 0.0
        return [{**e, "metered": "final", "elapsed_s": self.earlier["train_time_s"] + e["elapsed_s"],
                 "cum_energy_j": None if e["cum_energy_j"] is None else e0 + e["cum_energy_j"]} for e in epochs]
