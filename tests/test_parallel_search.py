"""K workers on one study: the budget is shared exactly, no trial is lost or duplicated, and the
trials a killed worker left running are failed by that worker's rerun (and by no other worker)."""
from __future__ import annotations

import copy
import json
import subprocess

import optuna
import pytest

from bpfree import config as bpcfg
from bpfree import study as studies
from bpfree.journal import storage
from cluster_helpers import BIN, TINY, env, make_repo, planned_jobs, snakemake

pytestmark = pytest.mark.slow
SPEC_CFG = copy.deepcopy(TINY)
SPEC_CFG["protocol"]["search"] = {"n_trials": 9, "workers": 3, "pruner": {"type": "none"}}
SPEC_CFG["protocol"]["stopping"] = {"max_epochs": 15, "patience": 15}  # ~1 s trials: the workers overlap
SPEC_CFG["algorithms"]["bp"]["fixed"]["batch_size"] = 32
SPEC = bpcfg.search_spec(SPEC_CFG, "tiny", "bp")


def _worker(spec_path, data, journal, k: int, K: int, out) -> subprocess.Popen:
    cmd = [str(BIN / "bpfree"), "search", "--spec", f"@{spec_path}", "--data", str(data), "--journal", str(journal),
           "--worker", str(k), "--workers", str(K), "--worker-out", str(out), "--threads", "1"]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trials(journal) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="search", storage=storage(journal)).get_trials(deepcopy=False)


def test_three_workers_share_one_study(tmp_path, digits_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    journal = tmp_path / "study.journal"
    procs = [_worker(spec_path, digits_path, journal, k, 3, tmp_path / f"w{k}.json") for k in range(3)]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    trials = _trials(journal)
    states = [t.state for t in trials]
    assert sorted(t.number for t in trials) == list(range(9)), "a trial was started beyond the budget"
    assert all(s in studies.FINISHED for s in states), states
    mine = [json.loads((tmp_path / f"w{k}.json").read_text()) for k in range(3)]
    claimed = [n for m in mine for n in m["finished_trials"]]
    assert sorted(claimed) == list(range(9)), f"lost or duplicated: {claimed}"
    # a worker stops once the others' running trials fill the budget; the last one out sees it full
    assert max(m["study_finished"] for m in mine) == 9
    assert len({t.user_attrs["worker"] for t in trials}) >= 2, "the workers did not run at once"
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 9


def test_a_killed_workers_running_trial_is_failed_by_its_own_rerun(tmp_path, digits_path):
    """State a SIGKILL of worker 1 leaves: one RUNNING trial tagged 1. Worker 0 leaves it alone
    (its owner could be alive) and stops one short; worker 1's rerun fails it and fills the budget."""
    spec = {**SPEC, "search": {**SPEC["search"], "n_trials": 3}}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    journal = tmp_path / "study.journal"
    study = studies.make_study(spec, journal)
    orphan = study.ask()
    orphan.set_user_attr("worker", "1")
    del study

    p = _worker(spec_path, digits_path, journal, 0, 2, tmp_path / "w0.json")
    assert p.wait(timeout=600) == 0
    by_state = {t.number: t.state for t in _trials(journal)}
    assert by_state[orphan.number] == optuna.trial.TrialState.RUNNING
    assert sum(s in studies.FINISHED for s in by_state.values()) == 2

    p = _worker(spec_path, digits_path, journal, 1, 2, tmp_path / "w1.json")
    assert p.wait(timeout=600) == 0
    trials = _trials(journal)
    assert {t.number: t.state for t in trials}[orphan.number] == optuna.trial.TrialState.FAIL
    assert sum(t.state in studies.FINISHED for t in trials) == 3
    w1 = json.loads((tmp_path / "w1.json").read_text())
    assert w1["failed_trials"] == [orphan.number] and len(w1["finished_trials"]) == 1


def test_workflow_plans_k_workers_and_one_best_step(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["protocol"]["search"]["workers"] = 3
    root = make_repo(tmp_path / "repo", cfg)
    jobs = planned_jobs(snakemake(root, "-n").stdout)
    workers = sorted(o for r, o in jobs if r == "search_worker")
    assert workers == [f"results/search/digits/tiny/{a}/workers/{k}.json" for a in ("bp", "mf") for k in range(3)]
    assert sorted(o for r, o in jobs if r == "search") == [
        "results/search/digits/tiny/bp/best.json", "results/search/digits/tiny/mf/best.json"]
