"""Search fidelity (protocol.search.limit_train and protocol.search.stopping): search trials train
on a fixed class-balanced subset under their own stopping rule; final runs keep the whole split and
protocol.stopping; both are recorded where the results are read."""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from bpfree import config as bpcfg
from bpfree import study as studies
from bpfree import search, train
from bpfree.data import balanced_subset, load
from bpfree.errors import ConfigError
from cluster_helpers import TINY

CFG = copy.deepcopy(TINY)
CFG["device"] = "cpu"
CFG["comparisons"] = [{"architecture": "tiny", "algorithms": ["bp"]}]
CFG["protocol"]["search"] = {"n_trials": 3, "pruner": {"type": "none"}, "limit_train": 200,
                             "stopping": {"max_epochs": 3, "patience": 2}}
CFG["protocol"]["stopping"] = {"max_epochs": 6, "patience": 6}


def _spec(cfg=CFG) -> dict:
    cfg = copy.deepcopy(cfg)
    bpcfg.validate(cfg)
    return bpcfg.search_spec(cfg, "tiny", "bp")


def test_balanced_subset_is_fixed_balanced_and_drawn_from_the_split(digits):
    sub = balanced_subset(digits, 200)
    counts = torch.bincount(sub.y_train, minlength=10)
    assert len(sub.y_train) == 200 and counts.max() - counts.min() <= 1
    again = balanced_subset(digits, 200)
    assert torch.equal(sub.x_train, again.x_train) and torch.equal(sub.y_train, again.y_train)
    rows = {tuple(r.tolist()) for r in digits.x_train.flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in sub.x_train.flatten(1))
    assert torch.equal(sub.x_val, digits.x_val) and torch.equal(sub.x_test, digits.x_test)
    assert sub.meta["sizes"]["train"] == 200 and sub.meta["subset"]["train"] == 200
    with pytest.raises(ValueError, match="exceeds the training split"):
        balanced_subset(digits, len(digits.y_train) + 1)


def test_search_trials_never_see_more_than_the_subset_nor_train_past_their_cap(tmp_path, digits_path, monkeypatch):
    seen, fit = [], search.fit

    def spy(algo, data, stopping, **kw):
        seen.append((data.y_train.clone(), data.x_train.shape[0], stopping))
        res = fit(algo, data, stopping, **kw)
        assert res.epochs <= 3
        return res

    monkeypatch.setattr(search, "fit", spy)
    spec = _spec()
    study = search.run_search(spec, digits_path, tmp_path / "s.journal")
    subset = balanced_subset(load(digits_path), 200).y_train
    assert len(seen) == 3
    for y, n, stopping in seen:
        assert n == 200 and torch.equal(y, subset)
        assert (stopping.max_epochs, stopping.patience) == (3, 2)
    best = studies.write_outputs(spec, study, tmp_path / "best.json", tmp_path / "trials.csv", {})
    written = json.loads((tmp_path / "best.json").read_text())
    assert written["search_fidelity"] == {"limit_train": 200, "stopping": {"max_epochs": 3, "patience": 2,
                                          "min_delta": 0.0}, "reduced": True}
    assert written["provenance"]["search_fidelity"] == written["search_fidelity"]
    assert best["budget"]["asked"] == 3 and best["budget"]["complete"] == 3
    assert best["budget"]["epochs"] == sum(t.user_attrs["epochs"] for t in study.trials)
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert set(trials.fidelity_limit_train) == {200} and set(trials.fidelity_max_epochs) == {3}
    assert (trials.epochs_trained <= 3).all()


def test_final_runs_train_on_the_whole_split_and_record_the_fidelity_they_were_tuned_at(tmp_path, digits_path):
    cfg = copy.deepcopy(CFG)
    bpcfg.validate(cfg)
    spec = bpcfg.search_spec(cfg, "tiny", "bp")
    study = search.run_search(spec, digits_path, tmp_path / "s.journal")
    studies.write_outputs(spec, study, tmp_path / "best.json", tmp_path / "trials.csv", {})
    m = train.run_final(bpcfg.train_spec(cfg, "tiny", "bp"), digits_path, tmp_path / "best.json", 0, tmp_path / "run")
    assert m["n_train"] == len(load(digits_path).y_train) > 200
    assert (m["search_limit_train"], m["search_max_epochs"], m["search_patience"]) == (200, 3, 2)
    assert m["search_n_trials"] == 3 and m["search_complete"] == 3
    assert m["epoch_cap"] == 6
    assert m["cpu_time_s"] > 0 and set(m["stage_cpu_s"]) == {"all"}
    assert m["load_1m_mean"] is not None and len(m["load_start"]) == 3
    assert m["flush_denormal"] is True


def test_jobs_flush_subnormal_floats_unless_the_config_says_not():
    """Regression: fa's epochs on MNIST grew from 5 to 32 CPU seconds as its signals decayed into
    subnormal floats (x86's slow path); every job now flushes them, the same for all algorithms."""
    from bpfree.device import set_flush_denormal

    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormal floats")
    try:
        assert set_flush_denormal({}) is True
        assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
        assert set_flush_denormal({"flush_denormal": False}) is False
        assert (torch.tensor([1e-39]) * 1.0).item() > 0.0
    finally:
        torch.set_flush_denormal(False)


def test_without_the_fidelity_keys_the_search_spec_is_unchanged():
    cfg = copy.deepcopy(CFG)
    cfg["protocol"]["search"] = {"n_trials": 3, "pruner": {"type": "none"}}
    spec = _spec(cfg)
    assert "limit_train" not in spec["search"] and "stopping" not in spec["search"]
    assert studies.fidelity(spec) == {"limit_train": None, "stopping": {"max_epochs": 6, "patience": 6,
                                     "min_delta": 0.0}, "reduced": False}


def test_a_search_subset_larger_than_the_final_split_is_refused():
    cfg = copy.deepcopy(CFG)
    cfg["limit_train"] = 100
    with pytest.raises(ConfigError, match="protocol.search.limit_train = 200 is larger than limit_train = 100"):
        bpcfg.validate(cfg)


def test_a_validation_subset_ranks_the_trials_and_is_recorded(tmp_path, digits_path, monkeypatch):
    seen, fit = [], search.fit

    def spy(algo, data, stopping, **kw):
        seen.append(data.y_val.clone())
        return fit(algo, data, stopping, **kw)

    monkeypatch.setattr(search, "fit", spy)
    cfg = copy.deepcopy(CFG)
    cfg["protocol"]["search"]["limit_val"] = 90
    spec = _spec(cfg)
    study = search.run_search(spec, digits_path, tmp_path / "s.journal")
    full = load(digits_path)
    want = balanced_subset(full, 90, "val").y_val
    assert all(torch.equal(y, want) for y in seen) and len(want) == 90 < len(full.y_val)
    assert torch.bincount(want, minlength=10).min() == 9
    studies.write_outputs(spec, study, tmp_path / "best.json", tmp_path / "trials.csv", {})
    assert json.loads((tmp_path / "best.json").read_text())["search_fidelity"]["limit_val"] == 90
    assert set(pd.read_csv(tmp_path / "trials.csv").fidelity_limit_val) == {90}
