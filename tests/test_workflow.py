"""The real DAG on tiny data: outputs, lint, a search-space edit reruns exactly mf's jobs, and a
bad config is refused before any job runs."""
from __future__ import annotations

import copy

import pandas as pd
import pytest

from cluster_helpers import REPO, TINY, make_repo, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow
CELL = "results/search/digits/tiny"
RUNS = "results/runs/digits/tiny"
SUMMARY_COLUMNS = ["dataset", "architecture", "algorithm", "seed", "test_accuracy", "train_time_s", "epochs",
                   "best_epoch", "energy_j", "energy_method", "peak_memory_mib", "n_params"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    cfg = copy.deepcopy(TINY)
    cfg["protocol"]["seeds"] = [0, 1]
    cfg["protocol"]["search"]["n_trials"] = 2
    root = make_repo(tmp_path_factory.mktemp("wf") / "repo", cfg)
    snakemake(root, "--cores", "2")
    return root, cfg


def test_outputs_of_a_full_run(done):
    root, _ = done
    df = pd.read_csv(root / "results/summary.csv")
    assert [c for c in df.columns if c in SUMMARY_COLUMNS] == SUMMARY_COLUMNS  # all there, in the README's order
    assert len(df) == 4 and set(df.algorithm) == {"bp", "mf"} and set(df.seed) == {0, 1}
    assert (df.energy_j > 0).all() and df.energy_method.notna().all()
    assert (df.test_accuracy > 10).all()  # better than chance even after 2 epochs
    assert (root / "results/table.md").read_text().count("| digits |") >= 2
    assert list((root / "results").rglob("*.png"))
    for seed in (0, 1):
        epochs = pd.read_csv(root / f"{RUNS}/mf/seed{seed}/epochs.csv")
        assert {"train_loss", "val_acc", "seconds"} <= set(epochs.columns)
    assert (root / f"{CELL}/mf/best.json").exists() and (root / f"{CELL}/mf/trials.csv").exists()
    for d in ("logs", "benchmarks"):
        assert list((root / d).rglob("*")), f"no per-job files under {d}/"


def test_second_run_has_nothing_to_do(done):
    root, _ = done
    assert planned_jobs(snakemake(root, "-n").stdout) == set()


def test_changing_mf_search_space_reruns_only_mf(done):
    root, cfg = done
    changed = copy.deepcopy(cfg)
    changed["algorithms"]["mf"]["space"]["lr"]["high"] = 2e-2
    write_config(root, changed)
    try:
        jobs = planned_jobs(snakemake(root, "-n").stdout)
    finally:
        write_config(root, cfg)
    rules = {r for r, _ in jobs}
    assert {o for r, o in jobs if r == "train"} == {f"{RUNS}/mf/seed0/metrics.json", f"{RUNS}/mf/seed1/metrics.json"}
    assert all("/bp/" not in o for _, o in jobs)
    assert {"search", "train", "report"} <= rules and not {"prepare"} & rules


def test_lint_is_clean():
    out = snakemake(REPO, "--lint", check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c["algorithms"]["mf"]["space"]["lr"].update(low=-1e-3), "algorithms.mf.space.lr.low = -0.001"),
    (lambda c: c["comparisons"][0]["algorithms"].append("zz"), "unknown algorithm 'zz'"),
    (lambda c: c.update(datasets=["digits", "imagenet"]), "imagenet"),
])
def test_bad_config_is_refused_before_any_job(tmp_path, edit, needle):
    cfg = copy.deepcopy(TINY)
    edit(cfg)
    root = make_repo(tmp_path / "repo", cfg)
    out = snakemake(root, "--cores", "1", check=False)
    assert out.returncode != 0
    assert needle in out.stdout + out.stderr
    assert not (root / "resources").exists() and not (root / "results").exists()
