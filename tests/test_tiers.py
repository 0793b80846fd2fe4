"""Tiers that never mix, the budget as spent, and verdicts under multiplicity with per-dataset margins."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from bpfree import cli, report, stats, tiers
from bpfree.stats import StatsConfig
from test_report import fake_run


def _edit(path, **changes):
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))
    return path


def test_the_report_refuses_to_pool_runs_of_different_protocols_under_one_cell(tmp_path, capsys):
    files = [fake_run(tmp_path, "mnist", "mlp", a, s, 98.0) for a in ("bp", "fa") for s in range(2)]
    _edit(files[1], patience=10)  # bp seed 1: another tier's stopping rule
    with pytest.raises(tiers.TierError, match=r"cell mnist/mlp/bp mixes runs of different protocols: the final "
                                              r"runs' patience \(patience\) is 5 in .*bp/seed0/metrics.json; "
                                              r"10 in .*bp/seed1/metrics.json"):
        report.run_report(files, tmp_path / "out")
    with pytest.raises(SystemExit) as e:  # the command line: one line, no traceback
        cli.main(["report", "--out-dir", str(tmp_path / "out"), *map(str, files)])
    assert e.value.code != 0 and "Traceback" not in capsys.readouterr().err


def test_the_report_refuses_a_comparison_whose_cells_were_tuned_at_different_fidelities(tmp_path):
    files = [fake_run(tmp_path, "mnist", "mlp", a, s, 98.0) for a in ("bp", "fa") for s in range(2)]
    for f in files:
        _edit(f, search_limit_train=10000 if "/bp/" in str(f) else None)
    with pytest.raises(tiers.TierError, match=r"comparison mnist/mlp mixes .*the search's training subset"):
        report.run_report(files, tmp_path / "out")


def test_the_report_refuses_a_comparison_of_runs_metered_alone_and_runs_that_shared_the_host(tmp_path):
    """Time deltas compare like with like: bp held its host alone, fa shared it."""
    files = [fake_run(tmp_path, "mnist", "mlp", a, s, 98.0) for a in ("bp", "fa") for s in range(2)]
    for f in files:
        _edit(f, metered_alone="/bp/" in str(f))
    with pytest.raises(tiers.TierError, match=r"comparison mnist/mlp mixes .*metered_alone"):
        report.run_report(files, tmp_path / "out")
    for f in files[2:]:  # fa's runs made before the key existed: they shared the host like bp's now
        m = json.loads(f.read_text())
        m.pop("metered_alone")
        f.write_text(json.dumps(m))
    for f in files[:2]:
        _edit(f, metered_alone=False)
    report.run_report(files, tmp_path / "out")


def test_the_report_refuses_two_networks_that_share_a_name(tmp_path):
    files = [fake_run(tmp_path, "digits", "tiny", a, s, 90.0) for a in ("bp", "mf") for s in range(2)]
    for f in files:
        _edit(f, arch={"type": "mlp", "widths": [16] if "/bp/" in str(f) else [32]})
    with pytest.raises(tiers.TierError, match=r"architecture 'tiny' names 2 different networks on digits"):
        report.run_report(files, tmp_path / "out")
    files = [fake_run(tmp_path / "b", "digits", "tiny", "bp", s, 90.0) for s in range(2)]
    _edit(files[0], n_params=5000)  # an older run without `arch`: its size gives it away
    with pytest.raises(tiers.TierError, match=r"networks of different sizes in cell digits/tiny/bp"):
        report.run_report(files, tmp_path / "b" / "out")


def test_holm_adjustment_matches_statsmodels_and_a_hand_computed_example():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # Holm by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, running maximum
    hand = {0.005: 0.02, 0.01: 0.03, 0.03: 0.06, 0.04: 0.06}
    dl = pd.DataFrame({"dataset": "d", "architecture": "a", "algorithm": list("wxyz"), "metric": "test_accuracy",
                       "unit": "pp", "n_pairs": 5, "verdict_kind": stats.EQUIVALENT,
                       "verdict": "equivalent within ±0.5 pp",
                       "p_value": p, "p_adjusted": np.nan, "multiplicity": "", "margin": 0.5, "d_mean": 0.0,
                       "d_sd": 0.1, "seeds_needed": np.nan, "seeds_needed_note": "",
                       **{k: np.nan for k in ("estimate", "ci_low", "ci_high", "verdict_low", "verdict_high")},
                       "status": "", "resolved": True, "note": "", "verdict_method": ""})
    out = stats.adjust(dl, StatsConfig(multiplicity="holm"))
    assert out.p_adjusted.tolist() == pytest.approx([hand[x] for x in p])
    assert out.p_adjusted.tolist() == pytest.approx(multipletests(p, method="holm")[1].tolist())
    assert (out.verdict_kind == [stats.EQUIVALENT, stats.UNRESOLVED, stats.UNRESOLVED, stats.EQUIVALENT]).all()
    assert out.verdict[1].startswith("not resolved after holm (alone: equivalent within ±0.5 pp")
    assert set(out.multiplicity) == {"holm over 4 test_accuracy verdicts"}
    # the family is per metric by default; "report" pools every metric's verdicts
    two = pd.concat([dl, dl.assign(metric="train_time_s")], ignore_index=True)
    per_metric = stats.adjust(two, StatsConfig(multiplicity="holm"))
    assert per_metric.p_adjusted.tolist()[:4] == pytest.approx(multipletests(p, method="holm")[1].tolist())
    pooled = stats.adjust(two, StatsConfig(multiplicity="holm", family="report"))
    assert pooled.p_adjusted.tolist() == pytest.approx(multipletests(np.r_[p, p], method="holm")[1].tolist())
    assert set(pooled.multiplicity) == {"holm over 8 verdicts"}
    bh = stats.adjust(dl, StatsConfig(multiplicity="fdr_bh"))
    assert bh.p_adjusted.tolist() == pytest.approx(multipletests(p, method="fdr_bh")[1].tolist())
    assert (stats.adjust(dl, StatsConfig(multiplicity="none")).verdict_kind == stats.EQUIVALENT).all()


def test_margins_differ_per_dataset_and_deltas_csv_has_adjusted_p_values(tmp_path):
    files = []
    for ds in ("mnist", "fashion_mnist"):
        for s in range(5):
            files.append(fake_run(tmp_path, ds, "mlp", "bp", s, 90.0 + 0.3 * s))
            files.append(fake_run(tmp_path, ds, "mlp", "fa", s, 90.0 + 0.3 * s - 0.6 + 0.01 * s))
    cfg = {"resamples": 200, "margins": {"test_accuracy": {"mnist": 0.25, "fashion_mnist": 1.5}}}
    report.run_report(files, tmp_path / "out", cfg)
    dl = pd.read_csv(tmp_path / "out" / "deltas.csv")
    acc = dl[dl.metric == "test_accuracy"].set_index("dataset")
    assert acc.margin.to_dict() == {"fashion_mnist": 1.5, "mnist": 0.25}
    assert acc.loc["fashion_mnist", "verdict"] == "equivalent within ±1.5 pp"
    assert acc.loc["mnist", "verdict"].startswith("worse by more than 0.25 pp")
    assert {"p_value", "p_adjusted", "multiplicity", "d_sd"} <= set(dl.columns)
    assert acc.p_adjusted.notna().all() and (acc.p_adjusted >= acc.p_value).all()
    energy = dl[dl.metric == "energy_j"]  # fake runs' energy is an estimate: no verdict of its own
    assert energy.verdict.str.startswith("no verdict: an estimate").all() and energy.p_value.isna().all()
    notes = (tmp_path / "out" / "deltas.md").read_text()
    assert "test_accuracy ±0.25 pp on mnist, ±1.5 pp on fashion_mnist" in notes
    assert "Holm-Bonferroni" in notes and "randomness of the final runs' seeds only" in notes


def test_seeds_needed_states_its_n_spread_and_range():
    ref = pd.Series([98.0, 98.2, 97.9], index=[0, 1, 2])
    d = stats.paired_delta(ref + [0.1, -0.3, 0.35], ref, "test_accuracy", "pp", StatsConfig(resamples=200))
    assert d.verdict_kind == stats.UNRESOLVED
    assert "from n = 3 pairs, sd of the differences" in d.seeds_needed_note
    assert "seeds over that interval" in d.seeds_needed_note


def test_the_search_table_gives_complete_pruned_and_failed_trials(tmp_path):
    files = [fake_run(tmp_path, "mnist", "mlp", a, s, 98.0) for a in ("bp", "fa") for s in range(2)]
    for alg, (c, p, f) in {"bp": (5, 14, 1), "fa": (20, 0, 0)}.items():
        best = tmp_path / "results" / "search" / "mnist" / "mlp" / alg / "best.json"
        best.parent.mkdir(parents=True)
        best.write_text(json.dumps({"params": {}, "budget": {"asked": 20, "complete": c, "pruned": p, "failed": f,
                                                             "epochs": 99},
                                    "search_fidelity": {"limit_train": 10000, "stopping": {"max_epochs": 15,
                                                                                           "patience": 5}}}))
    report.run_report(files, tmp_path / "out", {"resamples": 200})
    s = pd.read_csv(tmp_path / "out" / "search.csv").set_index("algorithm")
    budget = ["trials asked", "complete", "pruned", "failed", "epochs trained"]
    assert s.loc["bp", budget].tolist() == [20, 5, 14, 1, 99]
    assert s.loc["fa", "complete"] == 20 and s.loc["fa", "training images"] == 10000
    table = (tmp_path / "out" / "table.md").read_text()
    assert "## Searches: the budget as spent" in table
    assert "mnist/mlp/bp completed 5 of 20 trials asked (14 pruned, 1 failed)" in table
    assert "tuned on 10,000 training images, at most 15 epochs per stage, patience 5" in table


def test_two_tiers_summaries_concatenate_and_stay_apart(tmp_path):
    """summary.csv's protocol_id labels the study: one per tier, so rows of two summaries put side
    by side are told apart (and one report refuses to pool them)."""
    one = [fake_run(tmp_path / "a", "mnist", "mlp", a, s, 98.0) for a in ("bp", "fa") for s in range(2)]
    two = [_edit(fake_run(tmp_path / "b", "mnist", "mlp", a, s, 98.0), patience=10) for a in ("bp", "fa")
           for s in range(2)]
    both = pd.concat([report.summarize(report.load_runs(one)), report.summarize(report.load_runs(two))])
    assert both.groupby("protocol_id").size().tolist() == [4, 4]
    with pytest.raises(tiers.TierError):
        report.run_report(one + two, tmp_path / "out")


def test_summary_carries_hyperparameters_commit_and_run_hash(tmp_path):
    files = [fake_run(tmp_path, "mnist", "mlp", "bp", s, 98.0) for s in range(2)]
    for f in files:
        _edit(f, hyperparameters={"lr": 1e-3, "batch_size": 128, "optimizer": "adamw"},
              provenance={"git_commit": "abc123", "run_sha256": "f" * 64})
    df = report.summarize(report.load_runs(files))
    assert df.hp_lr.tolist() == [1e-3, 1e-3] and set(df.hp_optimizer) == {"adamw"}
    assert set(df.git_commit) == {"abc123"} and df.run_sha256.str.len().eq(64).all()
    assert "hp_lr" not in stats.metric_columns(df)


def test_report_takes_its_statistics_from_a_config_file(tmp_path):
    files = [fake_run(tmp_path, "mnist", "mlp", a, s, 98.0 + 0.01 * s) for a in ("bp", "fa") for s in range(3)]
    cfg = tmp_path / "tier.yaml"
    cfg.write_text("protocol:\n  statistics:\n    resamples: 200\n    margins: {test_accuracy: {mnist: 0.3}}\n")
    cli.main(["report", "--config", str(cfg), "--out-dir", str(tmp_path / "out"), *map(str, files)])
    acc = pd.read_csv(tmp_path / "out" / "deltas.csv").query("metric == 'test_accuracy'")
    assert acc.margin.tolist() == [0.3]
