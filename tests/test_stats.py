"""Statistics against values computed by hand on small fixed inputs."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bpfree import stats
from bpfree.stats import StatsConfig, bootstrap_ci, mean_sd, paired_delta

CFG = StatsConfig(resamples=4000, seed=0)


def test_mean_sd_by_hand():
    n, mean, sd = mean_sd([1.0, 2.0, 3.0, 4.0])
    assert n == 4 and mean == 2.5
    assert sd == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, ddof 1


def test_mean_sd_single_value_and_missing():
    n, mean, sd = mean_sd([5.0, float("nan")])
    assert (n, mean) == (1, 5.0) and math.isnan(sd)
    n, mean, sd = mean_sd([])
    assert n == 0 and math.isnan(mean)


def test_accuracy_delta_is_paired_by_seed_not_by_order():
    ours = pd.Series([99.0, 98.0, 97.0], index=[2, 0, 1])     # seeds out of order
    ref = pd.Series([97.5, 97.5, 98.0], index=[0, 1, 2])
    d = paired_delta(ours, ref, "test_accuracy", "pp", CFG)
    # seed 0: 98.0 - 97.5, seed 1: 97.0 - 97.5, seed 2: 99.0 - 98.0 -> mean of (0.5, -0.5, 1.0)
    assert d.n_pairs == 3 and d.estimate == pytest.approx(1 / 3)
    assert d.ci_low <= d.estimate <= d.ci_high


def test_percent_delta_is_ratio_of_paired_means():
    ours = pd.Series([10.0, 12.0], index=[0, 1])
    ref = pd.Series([20.0, 20.0], index=[0, 1])
    d = paired_delta(ours, ref, "train_time_s", "pct", CFG)
    assert d.estimate == pytest.approx(100 * (11 / 20 - 1))  # -45 %


def test_two_pairs_interval_is_min_and_max_difference():
    # With n = 2 a resample's mean is d1 (p 1/4), (d1 + d2)/2 (p 1/2) or d2 (p 1/4), so the 2.5 and
    # 97.5 % quantiles are d1 and d2 exactly.
    ours, ref = pd.Series([1.0, 4.0]), pd.Series([0.0, 0.0])
    lo, hi = bootstrap_ci(ours, ref, "pp", resamples=4000, seed=1)
    assert (lo, hi) == (1.0, 4.0)


def test_constant_difference_gives_a_point_interval_and_is_resolved():
    ours = pd.Series([1.5, 2.5, 3.5, 4.5])
    d = paired_delta(ours, ours - 0.25, "test_accuracy", "pp", CFG)
    assert (d.estimate, d.ci_low, d.ci_high) == pytest.approx((0.25, 0.25, 0.25))
    assert d.resolved and d.status == "resolved"


def test_interval_containing_zero_is_not_resolved():
    ours, ref = pd.Series([1.0, -1.0, 0.5, -0.5]), pd.Series([0.0, 0.0, 0.0, 0.0])
    d = paired_delta(ours, ref, "test_accuracy", "pp", CFG)
    assert d.ci_low < 0 < d.ci_high
    assert not d.resolved and d.status == "not resolved at n = 4"


def test_bootstrap_is_reproducible_from_its_seed():
    a, b = np.array([3.0, 1.0, 4.0, 1.0, 5.0]), np.zeros(5)
    assert bootstrap_ci(a, b, "pp", 1000, seed=7) == bootstrap_ci(a, b, "pp", 1000, seed=7)


def _coverage(n: int, interval: str, reps: int = 300) -> float:
    """Share of 95 % intervals of a mean difference from N(0.7, 1) that contain the true 0.7."""
    rng = np.random.default_rng(123)
    hits = 0
    for r in range(reps):
        diff = rng.normal(0.7, 1.0, size=n)
        lo, hi = bootstrap_ci(diff, np.zeros(n), "pp", resamples=1000, seed=r, interval=interval)
        hits += lo <= 0.7 <= hi
    return hits / reps


def test_interval_coverage_on_a_known_distribution():
    assert 0.91 <= _coverage(20, "expanded-percentile") <= 0.98


def test_expanded_interval_fixes_small_n_undercoverage():
    """At n = 5 the plain percentile interval covers about 83 %; the expanded one about 91 %."""
    plain, expanded = _coverage(5, "percentile"), _coverage(5, "expanded-percentile")
    assert plain < 0.88 and expanded >= 0.88 and expanded > plain + 0.04


def test_tail_probability_by_hand():
    assert stats.tail_probability(5, 0.95, "percentile") == pytest.approx(0.025)
    # Phi(-sqrt(5/4) * t_4(0.975)) = Phi(-1.1180 * 2.7764) = Phi(-3.1042)
    assert stats.tail_probability(5, 0.95) == pytest.approx(0.000954, abs=2e-6)


def test_unpaired_cell_is_reported_not_compared():
    d = paired_delta(pd.Series([98.0, 97.0], index=[5, 6]), pd.Series([97.0, 96.0], index=[0, 1]),
                     "test_accuracy", "pp", CFG)
    assert d.n_pairs == 0 and math.isnan(d.estimate)
    assert d.status.startswith("unpaired")
    assert "[0, 1, 5, 6]" in d.note


def test_single_seed_cell_has_no_interval():
    d = paired_delta(pd.Series([98.0], index=[0]), pd.Series([97.0, 96.0], index=[0, 1]), "test_accuracy", "pp", CFG)
    assert d.n_pairs == 1 and d.estimate == pytest.approx(1.0)
    assert math.isnan(d.ci_low) and not d.resolved
    assert d.status.startswith("single seed")
    assert "[1]" in d.note  # the bp seed without a pair is named


def test_repeated_seed_is_not_compared():
    d = paired_delta(pd.Series([98.0, 97.0], index=[0, 0]), pd.Series([97.0, 96.0], index=[0, 1]),
                     "test_accuracy", "pp", CFG)
    assert math.isnan(d.estimate) and "repeats" in d.status


def _runs() -> pd.DataFrame:
    rows = []
    for s, (acc_bp, acc_mf, t_bp, t_mf) in enumerate([(97.0, 97.5, 10.0, 8.0), (96.0, 96.0, 12.0, 9.0),
                                                      (98.0, 98.9, 11.0, 10.0)]):
        rows += [{"dataset": "d", "architecture": "m", "algorithm": "bp", "seed": s, "test_accuracy": acc_bp,
                  "train_time_s": t_bp},
                 {"dataset": "d", "architecture": "m", "algorithm": "mf", "seed": s, "test_accuracy": acc_mf,
                  "train_time_s": t_mf}]
    rows.append({"dataset": "d", "architecture": "m", "algorithm": "solo", "seed": 0, "test_accuracy": 90.0,
                 "train_time_s": 1.0})
    rows.append({"dataset": "d", "architecture": "m", "algorithm": "stranger", "seed": 9, "test_accuracy": 90.0,
                 "train_time_s": 1.0})
    rows.append({"dataset": "d", "architecture": "other", "algorithm": "mf", "seed": 0, "test_accuracy": 90.0,
                 "train_time_s": 1.0})
    return pd.DataFrame(rows)


def test_cell_summary_by_hand():
    cells = stats.cell_summary(_runs()).set_index(["dataset", "architecture", "algorithm"])
    bp = cells.loc[("d", "m", "bp")]
    assert bp["n"] == 3 and bp["seeds"] == "0 1 2" and not bp["duplicate_seeds"]
    assert bp["test_accuracy_mean"] == pytest.approx(97.0) and bp["test_accuracy_sd"] == pytest.approx(1.0)
    assert bp["train_time_s_mean"] == pytest.approx(11.0) and bp["train_time_s_sd"] == pytest.approx(1.0)
    assert "seed_mean" not in cells.columns  # a seed is not a metric


def test_deltas_table_labels_every_kind_of_cell():
    dl = stats.deltas(_runs(), CFG).set_index(["architecture", "algorithm", "metric"])
    mf = dl.loc[("m", "mf", "test_accuracy")]
    assert mf["estimate"] == pytest.approx((0.5 + 0.0 + 0.9) / 3) and mf["n_pairs"] == 3
    assert dl.loc[("m", "mf", "train_time_s"), "estimate"] == pytest.approx(100 * (9 / 11 - 1))
    assert dl.loc[("m", "solo", "test_accuracy"), "status"].startswith("single seed")
    assert dl.loc[("m", "stranger", "test_accuracy"), "status"].startswith("unpaired")
    assert dl.loc[("other", "mf", "test_accuracy"), "status"].startswith("no bp cell")
    assert "energy_j" not in dl.index.get_level_values("metric")  # absent metrics are not invented


def test_time_to_target_reads_the_cumulative_records():
    df = pd.DataFrame({"epoch": [1, 2, 3], "val_acc": [50.0, 90.0, 95.0], "seconds": [1.0, 1.0, 1.0],
                       "elapsed_s": [1.1, 2.2, 3.3], "energy_j": [10.0, 10.0, 10.0],
                       "cum_energy_j": [10.0, 20.0, 30.0]})
    assert stats.time_to_target(df, 90.0) == (2.2, 20.0, 2)
    assert stats.time_to_target(df, 99.0) is None
    old = df.drop(columns=["elapsed_s", "cum_energy_j"])
    assert stats.time_to_target(old, 94.0) == (3.0, 30.0, 3)
    assert stats.time_to_target(old.drop(columns=["energy_j"]), 10.0) == (1.0, None, 1)
    assert stats.time_to_target(df.assign(cum_energy_j=[math.nan] * 3), 50.0) == (1.1, None, 1)


def test_to_target_by_hand():
    ep = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_acc": [50.0, 80.0, 90.0, 95.0],
                       "seconds": [1.0, 2.0, 3.0, 4.0], "energy_j": [10.0, 20.0, 30.0, 40.0]})
    hit = stats.to_target(ep, 90.0)
    assert hit["reached"] and hit["epoch"] == 3
    assert hit["seconds"] == pytest.approx(6.0) and hit["energy_j"] == pytest.approx(60.0)
    miss = stats.to_target(ep, 99.0)
    assert not miss["reached"] and math.isnan(miss["seconds"])


def test_to_target_table_uses_fraction_of_bp_mean():
    runs = _runs()
    ep = pd.DataFrame({"epoch": [1, 2], "val_acc": [90.0, 96.5], "seconds": [1.0, 1.0], "energy_j": [2.0, 2.0]})
    curves = {(r.dataset, r.architecture, r.algorithm, r.seed): ep for r in runs.itertuples()}
    tt = stats.to_target_table(runs, curves, fraction=0.99)
    row = tt[(tt.architecture == "m") & (tt.algorithm == "mf") & (tt.seed == 0)].iloc[0]
    assert row.target_acc == pytest.approx(0.99 * 97.0)  # 96.03
    assert row.reached and row.epoch == 2 and row.energy_j == pytest.approx(4.0)
    assert math.isnan(tt[tt.architecture == "other"].target_acc.iloc[0])  # no bp there


@pytest.mark.parametrize("bad", [{"resamples": 10}, {"confidence": 1.5}, {"target_fraction": 0}, {"typo": 1},
                                 {"interval": "bca"}, {"margins": {"test_accuracy": 0}},
                                 {"margins": {"energy_j": "ten"}}, {"margins": {"test_acuracy": 0.5}},
                                 {"verdict_method": "eyeball"}, {"alpha": 0.5},
                                 {"power": 1.0}, {"max_seeds": 2}])
def test_stats_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        StatsConfig.from_dict(bad)


def test_metric_missing_on_one_side_is_not_measured_rather_than_unpaired():
    nan = float("nan")
    d = paired_delta(pd.Series([nan, nan], index=[0, 1]), pd.Series([1.0, 2.0], index=[0, 1]), "energy_dynamic_j",
                     "pct", CFG)
    assert d.status == "not measured: no value in ours" and math.isnan(d.estimate)


# ---- verdicts at a margin -----------------------------------------------------------------------

def _acc(diffs, margin=0.5, **kw) -> stats.Delta:
    diffs = np.asarray(diffs, dtype=float)
    ref = pd.Series(97.0 + np.arange(len(diffs)) * 0.1)
    cfg = StatsConfig(resamples=2000, margins={**stats.MARGINS, "test_accuracy": margin}, **kw)
    return paired_delta(ref + diffs, ref, "test_accuracy", "pp", cfg)


def test_accuracy_verdicts_with_known_answers():
    eq = _acc([0.10, 0.05, 0.15, 0.08, 0.12])  # mean 0.10, sd 0.0381: t interval well inside ±0.5
    assert eq.verdict == "equivalent within ±0.5 pp" and eq.margin == 0.5
    assert "TOST" in eq.verdict_method and "90% t interval" in eq.verdict_method
    # by hand: 0.10 ± t_4(0.95) * 0.0381 / sqrt(5) = 0.10 ± 2.1318 * 0.01703
    assert (eq.verdict_low, eq.verdict_high) == pytest.approx((0.10 - 0.03631, 0.10 + 0.03631), abs=2e-4)
    assert math.isnan(eq.seeds_needed) and eq.seeds_needed_note == ""
    assert _acc([1.1, 0.9, 1.0, 1.2, 0.8]).verdict == "better by more than 0.5 pp"
    assert _acc([-1.1, -0.9, -1.0, -1.2, -0.8]).verdict == "worse by more than 0.5 pp"
    wide = _acc([1.0, -0.8, 0.6, -0.4, 0.2])  # mean 0.12, sd 0.72: no conclusion at n = 5
    assert wide.verdict == "not resolved" and wide.seeds_needed >= 6
    assert "paired seeds" in wide.seeds_needed_note and "estimate" in wide.seeds_needed_note
    # resolved against 0 yet not against the margin: "differs from bp" is not "better by more than m"
    edge = _acc([0.3, 0.5, 0.7, 0.4, 0.6])  # mean on the margin
    assert edge.resolved and edge.verdict == "not resolved"
    inside = _acc([0.3, 0.35, 0.4, 0.45, 0.5])  # differs from 0, by less than the margin
    assert inside.resolved and inside.verdict == "equivalent within ±0.5 pp"
    # a tighter margin turns an equivalence into a difference
    assert _acc([0.10, 0.05, 0.15, 0.08, 0.12], margin=0.05).verdict == "better by more than 0.05 pp"


def test_percent_verdicts_follow_the_metric_direction():
    bp = pd.Series([100.0, 110.0, 90.0, 105.0, 95.0])
    cfg = StatsConfig(resamples=2000)
    faster = paired_delta(bp * [0.50, 0.52, 0.48, 0.51, 0.49], bp, "train_time_s", "pct", cfg)
    assert faster.verdict == "better by more than 10 %"  # less time is better
    assert faster.verdict_low < -45 and faster.verdict_high > -55 and faster.verdict_high < -45
    slower = paired_delta(bp * 1.5, bp * [1.0, 1.01, 0.99, 1.0, 1.0], "energy_j", "pct", cfg)
    assert slower.verdict == "worse by more than 10 %"
    same = paired_delta(bp * [1.01, 0.99, 1.02, 0.98, 1.0], bp, "energy_j", "pct", cfg)
    assert same.verdict == "equivalent within ±10 %" and "log ratios" in same.verdict_method


def test_bootstrap_interval_method_applies_the_inclusion_rule():
    d = _acc([0.10, 0.05, 0.15, 0.08, 0.12], verdict_method="bootstrap-interval")
    assert d.verdict == "equivalent within ±0.5 pp" and "bootstrap" in d.verdict_method
    assert 0.05 <= d.verdict_low <= d.verdict_high <= 0.15  # inside the observed differences
    assert stats.classify_interval(0.6, 0.9, 0.5, True) == stats.BETTER
    assert stats.classify_interval(0.6, 0.9, 0.5, False) == stats.WORSE
    assert stats.classify_interval(-0.4, 0.6, 0.5, True) == stats.UNRESOLVED


N_SIM = 20000  # Monte Carlo SE of a 5 % rate: 0.15 %


def _rate(kind: str, true_diff: float, sd: float = 1.0, n: int = 5, unit: str = "pp", margin: float = 0.5,
          up: bool = True, alpha: float = 0.05, seed: int = 0) -> float:
    """Share of N_SIM simulated paired data sets (n seeds, normal differences) given `kind`."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(97.0, 0.3, size=(n, N_SIM)) if unit == "pp" else rng.lognormal(4.0, 0.2, size=(n, N_SIM))
    noise = rng.normal(true_diff, sd, size=(n, N_SIM))
    ours = ref + noise if unit == "pp" else ref * np.exp(noise)
    return float((stats.verdict_arrays(ours, ref, unit, margin, up, alpha)["kind"] == kind).mean())


@pytest.mark.parametrize("n", [3, 5, 10])
def test_verdict_error_rates_hold_at_the_nominal_level(n):
    """At a true delta on the margin each false verdict has probability alpha at most: "better by
    more than m" at exactly +m (the one-sided t test: exactly alpha), "equivalent" at +m (TOST:
    below alpha), on the percent scale too (log ratio on the bound)."""
    tol = 4 * math.sqrt(0.05 * 0.95 / N_SIM)
    assert _rate(stats.BETTER, 0.5, n=n) == pytest.approx(0.05, abs=tol)
    assert _rate(stats.WORSE, -0.5, n=n, seed=1) == pytest.approx(0.05, abs=tol)
    assert _rate(stats.EQUIVALENT, 0.5, n=n, seed=2) <= 0.05 + tol
    assert _rate(stats.EQUIVALENT, -0.5, sd=0.1, n=n, seed=3) <= 0.05 + tol  # small spread: TOST near alpha
    assert _rate(stats.EQUIVALENT, -0.5, sd=0.1, n=n, seed=3) >= 0.05 - tol
    # time: the log ratio exactly at log(1.1), the "worse by more than 10 %" bound
    assert _rate(stats.WORSE, math.log(1.1), sd=0.1, n=n, unit="pct", margin=10, up=False, seed=4) == \
        pytest.approx(0.05, abs=tol)


def test_verdicts_have_power_where_the_answer_is_clear():
    assert _rate(stats.EQUIVALENT, 0.0, sd=0.2, n=10) > 0.95
    assert _rate(stats.BETTER, 1.5, sd=0.5, n=5) > 0.9


def test_seeds_needed_reaches_its_power_in_simulation():
    """At the estimated n the verdict is reached in at least the planned 80 % of simulated runs
    (the estimate is a lower bound on power, so it may err high, but not by a factor of 2)."""
    for true, kind in ((0.1, stats.EQUIVALENT), (1.0, stats.BETTER)):
        n, note = stats.seeds_needed(true, 0.6, "pp", 0.5)
        assert n is not None and "80% power" in note
        assert _rate(kind, true, sd=0.6, n=n, seed=5) >= 0.8 - 0.01
        assert _rate(kind, true, sd=0.6, n=max(2, n // 2), seed=6) < 0.8
    n, _ = stats.seeds_needed(math.log(0.95), 0.1, "pct", 10)
    assert _rate(stats.EQUIVALENT, math.log(0.95), sd=0.1, n=n, unit="pct", margin=10, up=False, seed=7) >= 0.79


def test_seeds_needed_without_an_answer():
    assert stats.seeds_needed(0.5, 0.3, "pp", 0.5)[0] is None  # on the margin
    assert stats.seeds_needed(0.1, 0.0, "pp", 0.5) == (None, "no estimate: the observed differences have no spread")
    n, note = stats.seeds_needed(0.49, 1.0, "pp", 0.5, max_seeds=50)
    assert n is None and note.startswith("more than 50")


def test_schema_defaults_are_the_statistics_defaults():
    """The schema documents the defaults that StatsConfig applies: the two must not drift apart."""
    import yaml
    from dataclasses import asdict

    from bpfree.config import SCHEMA

    props = yaml.safe_load(SCHEMA.read_text())["properties"]["protocol"]["properties"]["statistics"]["properties"]
    schema = {k: v["default"] for k, v in props.items() if k != "margins"}
    ours = asdict(StatsConfig())
    assert schema == {k: ours[k] for k in schema}
    assert ours["margins"] == {"test_accuracy": 0.5, **{m: 10 for m in ours["margins"] if m != "test_accuracy"}}
    assert StatsConfig.from_dict(schema) == StatsConfig()


def test_target_fraction_is_a_statistics_setting_and_its_old_place_is_refused():
    """protocol.statistics.target_fraction reaches the report and no run's spec; the old key under
    protocol.metering is refused with a message that names the new place."""
    import copy

    from bpfree import config
    from cluster_helpers import TINY

    cfg = copy.deepcopy(TINY)
    config.validate(cfg)
    assert StatsConfig.from_dict(cfg["protocol"]["statistics"]).target_fraction == 0.99  # the schema's default
    spec = config.train_spec(cfg, "tiny", "bp")
    moved = copy.deepcopy(TINY)
    moved["protocol"]["statistics"] = {"target_fraction": 0.9}
    config.validate(moved)
    assert StatsConfig.from_dict(moved["protocol"]["statistics"]).target_fraction == 0.9
    assert config.train_spec(moved, "tiny", "bp") == spec  # editing it reruns no run
    old = copy.deepcopy(TINY)
    old["protocol"]["metering"] = {"target_fraction": 0.9}
    with pytest.raises(config.ConfigError, match=r"protocol.metering.target_fraction has moved to "
                                                  r"protocol.statistics.target_fraction"):
        config.validate(old)
