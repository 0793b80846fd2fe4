"""Cumulative-energy curves (time, joules), the energy between two times, and the original
study's board energy; the vocabulary every other module of the meter shares."""
from __future__ import annotations

import bisect
from contextlib import contextmanager

KWH = 3.6e6  # joules per kWh
MIB = 2**20
COMPONENTS = ("gpu", "cpu", "dram")
UNAVAILABLE = "unavailable"
ORIGINAL_STUDY_HZ = 5.0  # the original study's power polling rate (one reading per 0.2 s)


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


def energy_between(curve: Curve | None, a: float, b: float) -> float | None:
    """Joules of a cumulative curve between times a and b; None without readings."""
    if curve is None or not curve.t:
        return None
    ea, eb = curve.at(a), curve.at(b)
    return None if ea is None or eb is None else eb - ea


class Excluded:
    """A cumulative curve with the energy of some intervals taken out: `at(t)` is the curve's
    joules at t minus what it gained inside each interval before t. The functions that read
    curves (energy_between, component_energy, epoch_records) then leave those intervals out."""

    def __init__(self, curve: Curve, intervals: list[tuple[float, float]]):
        self.curve, self.intervals, self.t = curve, intervals, curve.t

    def at(self, t: float) -> float | None:
        e = self.curve.at(t)
        if e is None:
            return None
        for a, b in self.intervals:
            if a < t:
                ea, eb = self.curve.at(a), self.curve.at(min(t, b))
                e -= eb - ea
        return e


class Exclusions:
    """Intervals of a measurement window that are not the algorithm's training (its diagnostics,
    `Algorithm.epoch_metrics`): `during()` marks one; `seconds(a, b)` is their length inside
    [a, b]; `wrap(curves)` takes their energy out of cumulative curves (`Excluded`)."""

    def __init__(self, clock):
        self.clock, self.intervals = clock, []

    @contextmanager
    def during(self):
        a = self.clock()
        try:
            yield
        finally:
            self.intervals.append((a, self.clock()))

    def seconds(self, a: float, b: float) -> float:
        return sum(max(0.0, min(b, y) - max(a, x)) for x, y in self.intervals)

    def wrap(self, curves: dict) -> dict:
        return {c: Excluded(v, self.intervals) for c, v in curves.items()} if self.intervals else curves
