"""Verdicts at a margin: the equivalence range of a delta, the TOST verdicts of paired samples
(statsmodels' `ttost_paired`), the interval inclusion rule, the verdict's text and the paired seeds
a verdict would need (see bpfree.stats for how the deltas use them). Units as bpfree.compared: "pp"
(a difference) or "pct" (a ratio, tested on the log ratios)."""
from __future__ import annotations

import math

import numpy as np

from bpfree.compared import symbol

EQUIVALENT, BETTER, WORSE, UNRESOLVED = "equivalent", "better", "worse", "not resolved"


def margin_bounds(unit: str, margin: float) -> tuple[float, float]:
    """The equivalence range of the tested quantity: (-m, m) pp for a difference, the ratio
    (1 - m/100, 1 + m/100) for a percent delta (the form `ttost_paired(..., transform=np.log)` takes)."""
    return (-margin, margin) if unit == "pp" else (1.0 - margin / 100.0, 1.0 + margin / 100.0)


def verdict_arrays(ours, ref, unit: str, margin: float, higher_is_better: bool, alpha: float = 0.05) -> dict:
    """TOST verdicts of paired samples (rows: seeds; a second axis: independent data sets, as in the
    simulations of the tests). Returns arrays: `kind` (EQUIVALENT, BETTER, WORSE or UNRESOLVED), the
    1 - 2 alpha t interval `low`, `high` in the delta's unit (pp, or % of the geometric mean ratio),
    and the p values `p_equivalent` (TOST), `p_above`, `p_below` (one-sided, beyond each bound)."""
    from statsmodels.stats.weightstats import DescrStatsW, ttost_paired

    a, b = np.asarray(ours, dtype=float), np.asarray(ref, dtype=float)
    low, upp = margin_bounds(unit, margin)
    with np.errstate(divide="ignore", invalid="ignore"):  # zero spread: t = +-inf, a decided test
        p_eq, (_, p_low, _), (_, p_upp, _) = ttost_paired(a, b, low, upp, transform=None if unit == "pp" else np.log)
        d = a - b if unit == "pp" else np.log(a) - np.log(b)
        lo, hi = DescrStatsW(d).tconfint_mean(alpha=2 * alpha)
    lo, hi = np.where(np.isnan(lo), d.mean(axis=0), lo), np.where(np.isnan(hi), d.mean(axis=0), hi)
    if unit != "pp":
        lo, hi = 100.0 * np.expm1(lo), 100.0 * np.expm1(hi)
    p_eq, p_above, p_below = np.asarray(p_eq), 1.0 - np.asarray(p_upp), 1.0 - np.asarray(p_low)
    kind = np.full(p_eq.shape, UNRESOLVED, dtype=object)
    kind[p_eq < alpha] = EQUIVALENT
    kind[p_above < alpha] = BETTER if higher_is_better else WORSE
    kind[p_below < alpha] = WORSE if higher_is_better else BETTER
    return {"kind": kind, "low": lo, "high": hi, "p_equivalent": p_eq, "p_above": p_above, "p_below": p_below}


def classify_interval(low: float, high: float, margin: float, higher_is_better: bool) -> str:
    """The interval inclusion rule on an interval of the delta (pp or %): inside (-m, m), wholly
    beyond +m, wholly beyond -m, or neither."""
    if -margin < low and high < margin:
        return EQUIVALENT
    if low > margin:
        return BETTER if higher_is_better else WORSE
    if high < -margin:
        return WORSE if higher_is_better else BETTER
    return UNRESOLVED


def verdict_text(kind: str, margin: float, unit: str) -> str:
    """'equivalent within ±0.5 pp', 'better by more than 10 %', 'not resolved'."""
    m = f"{margin:g} {symbol(unit)}"
    return {EQUIVALENT: f"equivalent within ±{m}", BETTER: f"better by more than {m}",
            WORSE: f"worse by more than {m}"}.get(kind, UNRESOLVED)


def seeds_needed(d_mean: float, d_sd: float, unit: str, margin: float, alpha: float = 0.05,
                 power: float = 0.8, max_seeds: int = 1000) -> tuple[int | None, str]:
    """Paired seeds at which the TOST verdict is reached with probability `power`, if the true mean
    and sd of the per-seed differences (pp; for percent metrics the log ratios) are the observed
    `d_mean` and `d_sd`: an estimate (the sd of a few seeds is itself uncertain), normal differences.

    Inside the margin the target is "equivalent": power >= P(lower test rejects) + P(upper test
    rejects) - 1 (a lower bound, so the count errs high); outside it, the one-sided test beyond the
    nearer bound. Each one-sided power is statsmodels' `TTestPower` (noncentral t, df = n - 1).
    Returns (n, text); n is None where no n <= max_seeds reaches the power."""
    from statsmodels.stats.power import TTestPower

    low, upp = margin_bounds(unit, margin)
    if unit != "pp":
        low, upp = math.log(low), math.log(upp)
    assume = (f"estimate for {power:.0%} power at alpha {alpha:g}, assuming the observed mean and sd of the "
              "per-seed differences are the true ones" + (" (log ratios)" if unit != "pp" else ""))
    if not (math.isfinite(d_mean) and math.isfinite(d_sd)) or d_sd <= 0:
        return None, "no estimate: the observed differences have no spread"
    if d_mean in (low, upp):
        return None, "no estimate: the observed delta lies on the margin, where no n resolves it"
    n = np.arange(2, max_seeds + 1)
    one_sided = TTestPower().power

    def side(distance: float) -> np.ndarray:  # P(one-sided test rejects) at a true distance beyond its bound
        return one_sided(effect_size=distance / d_sd, nobs=n, alpha=alpha, alternative="larger")

    if low < d_mean < upp:
        reach, target = side(upp - d_mean) + side(d_mean - low) - 1.0, "equivalent within the margin"
    else:
        reach, target = side(d_mean - upp if d_mean > upp else low - d_mean), "beyond the margin"
    hit = np.flatnonzero(reach >= power)
    if len(hit) == 0:
        return None, f"more than {max_seeds} paired seeds to show {target} ({assume})"
    return int(n[hit[0]]), f"{int(n[hit[0]])} paired seeds to show {target} ({assume})"
