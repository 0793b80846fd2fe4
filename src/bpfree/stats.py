"""Statistics of final runs: n, mean and sd per cell; deltas against bp paired by seed, with a
paired bootstrap confidence interval and a verdict at a declared margin (its tests: bpfree.verdicts);
time and energy to a target accuracy (bpfree.target). The metrics compared: bpfree.compared.

A delta is computed only over the seeds both cells share. Its `status` says what can be claimed
against 0: "resolved" (the interval excludes 0), "not resolved at n = k" (it contains 0: never read
as "equal"), "single seed (n = 1): no interval", or why no comparison was made at all.

Its `verdict` says what can be claimed against the margin m of `protocol.statistics.margins`
(accuracy in percentage points, time, energy and memory in percent): "equivalent within ±m",
"better by more than m", "worse by more than m" or "not resolved". Method `tost` (default): two
one-sided paired t tests at level `alpha` each (Schuirmann 1987; statsmodels' `ttost_paired`), on the
differences for accuracy and on the per-seed log ratios for the percent metrics (so the margin is
a ratio 1 ± m/100 of the geometric mean); "better/worse by more than m" is the one-sided test beyond
the margin at the same level. Equivalently (the interval inclusion rule) the 1 - 2 alpha t interval
lies inside (-m, m), or beyond it. Method `bootstrap-interval` applies the same inclusion rule to
the bootstrap interval at 1 - 2 alpha (which undercovers at small n: see INTERVALS). Where a verdict
is "not resolved", `seeds_needed` estimates the paired seeds that would resolve it (see
`seeds_needed`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from bpfree import schema
from bpfree.compared import BY_NAME, COMPARED, REFERENCE
from bpfree.verdicts import (BETTER, EQUIVALENT, UNRESOLVED, WORSE, classify_interval, seeds_needed, verdict_arrays,
                             verdict_text)

# Kept under their names here too (callers and tests reach them as stats.NAME): the time to a target
# and the margin's bounds, whose modules these are now.
from bpfree.target import NOT_REACHED as NOT_REACHED
from bpfree.target import time_to_target as time_to_target
from bpfree.target import to_target as to_target
from bpfree.target import to_target_table as to_target_table
from bpfree.verdicts import margin_bounds as margin_bounds

CELL = ["dataset", "architecture", "algorithm"]
# metric -> unit of its delta against bp (bpfree.compared: "pp" = difference of means in percentage
# points, "pct" = ratio of means minus 1, in percent), in the order of COMPARED.
DELTA_METRICS = {m.name: m.unit for m in COMPARED}
# Energy read from these methods is a model of time (CodeCarbon's estimate: a constant power times the
# run's time): its delta repeats the time delta and is no second finding, so it gets no verdict.
ESTIMATED = {m.name: m.estimated_by for m in COMPARED if m.estimated_by}
MULTIPLICITY = tuple(schema.section("protocol", "statistics")["multiplicity"]["enum"])
NOT_METRICS = {"seed", "threads", "limit_train", "epoch_cap", "patience", "cpu_count"}  # numeric settings, not outcomes
NOT_METRIC_PREFIXES = ("hp_", "search_")  # a run's hyperparameters and its search's fidelity and budget
# A plain percentile interval undercovers at the small n of final runs (nominal 95 %: about 83 % at
# n = 5 on normal data); the expanded percentile interval (Hesterberg 2015) widens its quantiles
# to those a t interval would use: about 91 % at n = 5, 95 % from n = 10. No bootstrap interval
# can reach beyond the observed values, so at n <= 4 none reaches its nominal coverage.
INTERVALS = tuple(schema.section("protocol", "statistics")["interval"]["enum"])
VERDICT_METHODS = tuple(schema.section("protocol", "statistics")["verdict_method"]["enum"])
# The defaults of `protocol.statistics` are the schema's (src/bpfree/config.schema.yaml), their
# one home, but for the margins: each compared metric's default margin is its row's (bpfree.compared).
DEFAULTS = schema.defaults("protocol", "statistics")
MARGINS = {m.margin_key: m.default_margin for m in COMPARED if m.default_margin is not None}
HIGHER_IS_BETTER = {m.name for m in COMPARED if m.higher_is_better}


@dataclass(frozen=True)
class StatsConfig:
    """`protocol.statistics` of the config; its defaults are the schema's (`DEFAULTS`)."""

    resamples: int = DEFAULTS["resamples"]
    seed: int = DEFAULTS["seed"]
    confidence: float = DEFAULTS["confidence"]
    interval: str = DEFAULTS["interval"]
    target_fraction: float = DEFAULTS["target_fraction"]
    margins: dict = field(default_factory=lambda: dict(MARGINS))  # merged over MARGINS by from_dict
    verdict_method: str = DEFAULTS["verdict_method"]
    alpha: float = DEFAULTS["alpha"]
    power: float = DEFAULTS["power"]
    max_seeds: int = DEFAULTS["max_seeds"]
    multiplicity: str = DEFAULTS["multiplicity"]
    family: str = DEFAULTS["family"]

    def margin(self, metric: str, dataset: str | None = None) -> float | None:
        """The margin of `metric` (a compared metric's name, looked up by its row's margin key) on
        `dataset` (a per-dataset mapping: its entry, else its `default`, else the row's default);
        None if the metric has no margin."""
        key = BY_NAME[metric].margin_key if metric in BY_NAME else metric
        m = self.margins.get(key)
        if isinstance(m, dict):
            m = m.get(dataset, m.get("default", MARGINS.get(key)))
        return None if m is None else float(m)

    @classmethod
    def from_dict(cls, d: dict | None) -> StatsConfig:
        """From the config's `protocol.statistics` (or `bpfree report --statistics`), checked against
        the schema (ValueError naming the key); margins not given keep their default."""
        d = dict(d or {})
        why = schema.first_error(d, "protocol", "statistics")
        if why:
            raise ValueError(why)
        if unknown := sorted(set(d.get("margins") or {}) - {m.margin_key for m in COMPARED}):
            raise ValueError(f"protocol.statistics.margins.{unknown[0]}: not a compared metric (bpfree.compared: "
                             f"{', '.join(m.margin_key for m in COMPARED)})")
        d["margins"] = {**MARGINS, **(d.get("margins") or {})}
        return cls(**d)


def mean_sd(x) -> tuple[int, float, float]:
    """n, mean and sample standard deviation (ddof = 1; NaN when n < 2) of the finite values."""
    a = np.asarray(x, dtype=float)
    a = a[np.isfinite(a)]
    n = len(a)
    mean = float(a.mean()) if n else float("nan")
    sd = float(a.std(ddof=1)) if n >= 2 else float("nan")
    return n, mean, sd


def metric_columns(runs: pd.DataFrame) -> list[str]:
    return [c for c in runs.columns if c not in NOT_METRICS and c not in CELL and not c.startswith(NOT_METRIC_PREFIXES)
            and pd.api.types.is_numeric_dtype(runs[c]) and not pd.api.types.is_bool_dtype(runs[c])]


def cell_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: n (runs), the seeds, whether a seed repeats, and n/mean/sd of every
    numeric metric (`<metric>_n`, `<metric>_mean`, `<metric>_sd`)."""
    rows = []
    for key, g in runs.groupby(CELL, sort=True):
        row = dict(zip(CELL, key))
        seeds = g["seed"].tolist() if "seed" in g else []
        row.update(n=len(g), seeds=" ".join(str(s) for s in sorted(seeds)),
                   duplicate_seeds=len(seeds) != len(set(seeds)))
        for m in metric_columns(runs):
            row[f"{m}_n"], row[f"{m}_mean"], row[f"{m}_sd"] = mean_sd(g[m])
        rows.append(row)
    return pd.DataFrame(rows)


def _delta_stat(a: np.ndarray, b: np.ndarray, unit: str) -> np.ndarray:
    """Delta of `a` against reference `b` along the last axis (rows of paired samples)."""
    if unit == "pp":
        return (a - b).mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * (a.mean(axis=-1) / b.mean(axis=-1) - 1.0)


def tail_probability(n: int, confidence: float, interval: str = "expanded-percentile") -> float:
    """Lower quantile level of the interval: (1 - confidence) / 2, or for the expanded percentile
    interval Phi(-sqrt(n / (n - 1)) t_{n-1}(1 - (1 - confidence) / 2))."""
    alpha = (1.0 - confidence) / 2
    if interval == "percentile" or n < 2:
        return alpha
    from scipy.stats import norm, t

    return float(norm.cdf(-math.sqrt(n / (n - 1)) * t.ppf(1.0 - alpha, n - 1)))


def bootstrap_ci(a, b, unit: str, resamples: int = 10000, seed: int = 0, confidence: float = 0.95,
                 interval: str = "expanded-percentile") -> tuple[float, float]:
    """Bootstrap interval of the paired delta: the same resampled seed indices for `a` and `b`."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    stats = _delta_stat(a[idx], b[idx], unit)
    p = tail_probability(len(a), confidence, interval)
    lo, hi = np.quantile(stats, [p, 1.0 - p])
    return float(lo), float(hi)


@dataclass
class Delta:
    metric: str
    unit: str
    n_pairs: int
    estimate: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    status: str = ""
    resolved: bool = False
    note: str = ""
    margin: float = float("nan")
    verdict: str = ""
    verdict_kind: str = ""  # EQUIVALENT, BETTER, WORSE or UNRESOLVED; "" where no verdict was made
    verdict_method: str = ""
    verdict_low: float = float("nan")
    verdict_high: float = float("nan")
    seeds_needed: float = float("nan")  # NaN: resolved, not estimable, or beyond max_seeds
    seeds_needed_note: str = ""
    p_value: float = float("nan")  # the p value of the verdict's claim (for an unresolved one: its best claim)
    p_adjusted: float = float("nan")  # after the report's multiplicity control (`multiplicity`)
    multiplicity: str = ""  # the method and the size of the family it corrected over
    d_mean: float = float("nan")  # mean and sd of the per-seed differences (pp, or log ratios)
    d_sd: float = float("nan")


def paired_delta(ours: pd.Series, ref: pd.Series, metric: str, unit: str,
                 cfg: StatsConfig = StatsConfig(), dataset: str | None = None) -> Delta:
    """Delta of `ours` against `ref` (both indexed by seed), over the seeds both have a finite
    value for. Unpaired seeds are left out and named in `note`. The verdict uses the margin of
    `metric` on `dataset`; it is not yet corrected for multiplicity (`adjust` does that)."""
    for name, s in (("ours", ours), ("reference", ref)):
        if s.index.has_duplicates:
            dup = sorted(set(s.index[s.index.duplicated()].tolist()))
            return Delta(metric, unit, 0, status=f"not compared: seed {dup} repeats in the {name} cell")
    ours, ref = ours[np.isfinite(ours.astype(float))], ref[np.isfinite(ref.astype(float))]
    missing = [name for name, s in (("ours", ours), ("bp", ref)) if s.empty]
    if missing:
        return Delta(metric, unit, 0, status=f"not measured: no value in {' or '.join(missing)}")
    common = sorted(set(ours.index) & set(ref.index))
    left_out = sorted(set(ours.index) ^ set(ref.index))
    note = f"seeds without a pair left out: {left_out}" if left_out else ""
    n = len(common)
    if n == 0:
        return Delta(metric, unit, 0, status="unpaired: no seed in common with bp", note=note)
    a, b = ours.loc[common].to_numpy(float), ref.loc[common].to_numpy(float)
    if unit == "pct" and b.mean() == 0:
        return Delta(metric, unit, n, status="not compared: the bp mean is 0", note=note)
    d = Delta(metric, unit, n, estimate=float(_delta_stat(a, b, unit)), note=note)
    margin = cfg.margin(metric, dataset)
    if n == 1:
        d.status = "single seed (n = 1): no interval"
        d.verdict = f"{UNRESOLVED} (n = 1)" if margin is not None else ""
        return d
    d.ci_low, d.ci_high = bootstrap_ci(a, b, unit, cfg.resamples, cfg.seed, cfg.confidence, cfg.interval)
    d.resolved = not d.ci_low <= 0.0 <= d.ci_high
    d.status = "resolved" if d.resolved else f"not resolved at n = {n}"
    if margin is not None:
        _verdict(d, a, b, metric, margin, cfg)
    return d


def _verdict(d: Delta, a: np.ndarray, b: np.ndarray, metric: str, m: float, cfg: StatsConfig) -> None:
    d.margin = m
    up = metric in HIGHER_IS_BETTER
    level = f"{1 - 2 * cfg.alpha:.0%}"
    if d.unit == "pct" and ((a <= 0).any() or (b <= 0).any()):
        d.verdict = "not compared: a value <= 0 has no log ratio"
        return
    v = verdict_arrays(a, b, d.unit, m, up, cfg.alpha)
    p = {EQUIVALENT: float(v["p_equivalent"]), BETTER: float(v["p_above"] if up else v["p_below"]),
         WORSE: float(v["p_below"] if up else v["p_above"])}
    if cfg.verdict_method == "tost":
        kind, d.verdict_low, d.verdict_high = v["kind"].item(), float(v["low"]), float(v["high"])
        scale = "differences" if d.unit == "pp" else "log ratios (geometric mean ratio)"
        d.verdict_method = f"TOST, paired t on the {scale}, alpha {cfg.alpha:g} per side ({level} t interval)"
    else:
        d.verdict_low, d.verdict_high = bootstrap_ci(a, b, d.unit, cfg.resamples, cfg.seed, 1 - 2 * cfg.alpha,
                                                     cfg.interval)
        kind = classify_interval(d.verdict_low, d.verdict_high, m, up)
        d.verdict_method = f"{level} bootstrap {cfg.interval} interval inside/beyond the margin"
    d.verdict, d.verdict_kind = verdict_text(kind, m, d.unit), kind
    d.p_value = p[kind] if kind != UNRESOLVED else min(p.values())
    diffs = a - b if d.unit == "pp" else np.log(a) - np.log(b)
    d.d_mean, d.d_sd = float(diffs.mean()), float(diffs.std(ddof=1))
    if kind == UNRESOLVED:
        _seeds_needed(d, cfg, cfg.alpha)


def _seeds_needed(d: Delta, cfg: StatsConfig, alpha: float) -> None:
    """The seeds-needed estimate of an unresolved verdict at level `alpha`, with the n and the sd it
    rests on and the range it spans over the 95 % chi-square interval of that sd (an sd from a few
    seeds is itself uncertain, several-fold at n = 3)."""
    from scipy.stats import chi2

    n_needed, note = seeds_needed(d.d_mean, d.d_sd, d.unit, d.margin, alpha, cfg.power, cfg.max_seeds)
    d.seeds_needed = float("nan") if n_needed is None else float(n_needed)
    if n_needed is None or not d.d_sd > 0:
        d.seeds_needed_note = note
        return
    df = d.n_pairs - 1
    sd_lo, sd_hi = (d.d_sd * math.sqrt(df / chi2.ppf(q, df)) for q in (0.975, 0.025))
    ends = [seeds_needed(d.d_mean, s, d.unit, d.margin, alpha, cfg.power, cfg.max_seeds)[0] for s in (sd_lo, sd_hi)]
    span = " to ".join(str(e) if e is not None else f"more than {cfg.max_seeds}" for e in ends)
    scale = "pp" if d.unit == "pp" else "(log ratio)"
    d.seeds_needed_note = (f"{note}; from n = {d.n_pairs} pairs, sd of the differences {d.d_sd:.3g} {scale} "
                           f"(95 % interval {sd_lo:.3g} to {sd_hi:.3g}): {span} seeds over that interval"
                           + (f"; at the level alpha = {alpha:.3g} that the multiplicity control asks of the "
                              "first test" if alpha != cfg.alpha else ""))


def adjust(dl: pd.DataFrame, cfg: StatsConfig) -> pd.DataFrame:
    """Multiplicity control over the verdicts of one report (statsmodels' `multipletests`, method
    `cfg.multiplicity`). The family (`cfg.family`) is every row of `dl` with a verdict on one metric
    ("metric": accuracy verdicts are corrected among themselves, time verdicts among themselves, ...)
    or on any metric ("report"). A verdict whose adjusted p value is not below alpha becomes "not
    resolved", with a seeds-needed estimate at the level alpha / m (the strictest step of Holm;
    Bonferroni's level)."""
    dl = dl.copy()
    judged = dl.verdict_kind.isin([EQUIVALENT, BETTER, WORSE, UNRESOLVED]) & dl.p_value.notna()
    keys = dl.metric if cfg.family == "metric" else pd.Series("all", index=dl.index)
    for key in sorted(set(keys[judged])):
        dl = _adjust_family(dl, dl.index[judged & (keys == key)], cfg,
                            f"{key} verdicts" if cfg.family == "metric" else "verdicts")
    return dl


def _adjust_family(dl: pd.DataFrame, fam: pd.Index, cfg: StatsConfig, what: str) -> pd.DataFrame:
    m = len(fam)
    if m == 0:
        return dl
    if cfg.multiplicity == "none":
        dl.loc[fam, "p_adjusted"] = dl.loc[fam, "p_value"]
        dl.loc[fam, "multiplicity"] = f"none (a family of {m} {what})"
        return dl
    from statsmodels.stats.multitest import multipletests

    _, p_adj, _, _ = multipletests(dl.loc[fam, "p_value"].to_numpy(float), alpha=cfg.alpha, method=cfg.multiplicity)
    dl.loc[fam, "p_adjusted"] = p_adj
    dl.loc[fam, "multiplicity"] = f"{cfg.multiplicity} over {m} {what}"
    level = cfg.alpha / m if cfg.multiplicity in ("holm", "bonferroni") else cfg.alpha
    for i in fam:
        row = dl.loc[i]
        overturned = row.verdict_kind != UNRESOLVED and row.p_adjusted >= cfg.alpha
        if not overturned and (row.verdict_kind != UNRESOLVED or level == cfg.alpha):
            continue  # a verdict that stands, or an estimate already made at this level
        d = Delta(**{k: row[k] for k in Delta.__dataclass_fields__})
        if overturned:
            d.verdict_kind, d.verdict = UNRESOLVED, (f"{UNRESOLVED} after {cfg.multiplicity} (alone: {row.verdict}; "
                                                     f"p {row.p_value:.3g}, adjusted {row.p_adjusted:.3g})")
        _seeds_needed(d, cfg, level)
        for k in ("verdict_kind", "verdict", "seeds_needed", "seeds_needed_note"):
            dl.at[i, k] = getattr(d, k)
    return dl


def deltas(runs: pd.DataFrame, cfg: StatsConfig = StatsConfig()) -> pd.DataFrame:
    """Every non-bp cell against bp on the same dataset and architecture, for each metric of
    DELTA_METRICS present in `runs`, with the verdicts corrected for multiplicity (`adjust`).
    An energy delta of two estimated cells (ESTIMATED) keeps its interval but gets no verdict."""
    return adjust(raw_deltas(runs, cfg), cfg)


def estimated(g: pd.DataFrame, metric: str) -> bool:
    """Whether every run of `g` has `metric` from an estimate (see ESTIMATED)."""
    col = ESTIMATED.get(metric)
    return col is not None and col in g and len(g) > 0 and g[col].astype(str).str.contains("estimate").all()


def raw_deltas(runs: pd.DataFrame, cfg: StatsConfig = StatsConfig()) -> pd.DataFrame:
    """`deltas` before the multiplicity control."""
    metrics = {m: u for m, u in DELTA_METRICS.items() if m in runs.columns}
    rows = []
    for (d, a), group in runs.groupby(["dataset", "architecture"], sort=True):
        ref = group[group.algorithm == REFERENCE]
        for alg, g in group.groupby("algorithm", sort=True):
            if alg == REFERENCE:
                continue
            for m, unit in metrics.items():
                if ref.empty:
                    res = Delta(m, unit, 0, status=f"no {REFERENCE} cell on this dataset and architecture")
                elif estimated(g, m) and estimated(ref, m):
                    res = paired_delta(g.set_index("seed")[m], ref.set_index("seed")[m], m, unit,
                                       replace(cfg, margins={}), d)
                    res.verdict = ("no verdict: an estimate (time x a constant power), it repeats the time delta "
                                   "and carries no information beyond it")
                else:
                    res = paired_delta(g.set_index("seed")[m], ref.set_index("seed")[m], m, unit, cfg, d)
                rows.append({"dataset": d, "architecture": a, "algorithm": alg, "n_ours": len(g),
                             "n_ref": len(ref), **asdict(res)})
    cols = ["dataset", "architecture", "algorithm", "n_ours", "n_ref", *Delta.__dataclass_fields__]
    return pd.DataFrame(rows, columns=cols)
