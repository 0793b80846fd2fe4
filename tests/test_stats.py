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
                                 {"interval": "bca"}])
def test_stats_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        StatsConfig.from_dict(bad)


def test_metric_missing_on_one_side_is_not_measured_rather_than_unpaired():
    nan = float("nan")
    d = paired_delta(pd.Series([nan, nan], index=[0, 1]), pd.Series([1.0, 2.0], index=[0, 1]), "energy_dynamic_j",
                     "pct", CFG)
    assert d.status == "not measured: no value in ours" and math.isnan(d.estimate)
