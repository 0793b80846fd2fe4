"""The field study's shard runner on the real DAG with tiny data: a config with a reduced search
fidelity runs end to end; committed per-run files restored into a fresh working directory count as
done (nothing is computed twice); a report rebuilt from them gives the same numbers."""
from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import sys

import pandas as pd
import pytest

from cluster_helpers import REPO, TINY, env, make_repo, planned_jobs, snakemake

pytestmark = pytest.mark.slow
SPEC = importlib.util.spec_from_file_location("field_shards", REPO / "workflow" / "scripts" / "field_shards.py")
shards = sys.modules.setdefault("field_shards", importlib.util.module_from_spec(SPEC))
SPEC.loader.exec_module(shards)
KEEP = (*shards.SEARCH_FILES, *shards.RUN_FILES)


def test_a_reduced_fidelity_study_restored_elsewhere_has_nothing_left_to_compute(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["protocol"]["seeds"] = [0, 1]
    cfg["protocol"]["search"] = {"n_trials": 2, "pruner": {"type": "none"}, "limit_train": 300,
                                 "stopping": {"max_epochs": 2, "patience": 1}}
    cfg["protocol"]["stopping"] = {"max_epochs": 4, "patience": 4}
    first = make_repo(tmp_path / "first", cfg)
    snakemake(first, "--cores", "2")
    best = json.loads((first / "results/search/digits/tiny/bp/best.json").read_text())
    assert best["search_fidelity"]["limit_train"] == 300 and best["budget"]["complete"] == 2
    m = json.loads((first / "results/runs/digits/tiny/bp/seed0/metrics.json").read_text())
    assert m["n_train"] > 300 and m["search_limit_train"] == 300 and m["epoch_cap"] == 4

    committed = tmp_path / "committed"  # what a shard commits under docs/results/field/<tier>/
    for f in (first / "results").rglob("*"):
        rel = f.relative_to(first / "results")
        if f.is_file() and (rel.parts[0] in ("search", "runs")) and (f.name in KEEP or rel.parts[-2:][0] == "workers"):
            (committed / "results" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, committed / "results" / rel)
    fresh = make_repo(tmp_path / "fresh", cfg)  # a clone elsewhere, no results, no .snakemake
    n = shards.restore_into(committed, fresh, fresh / "Snakefile", fresh / "config" / "config.yaml", env=env())
    assert n == len([f for f in committed.rglob("*") if f.is_file()]) > 0
    jobs = {rule for rule, _ in planned_jobs(snakemake(fresh, "-n").stdout)}
    assert jobs <= {"report", "all"}, jobs  # no search, no final run is computed again
    snakemake(fresh, "--cores", "1")
    again, before = (pd.read_csv(r / "results/summary.csv") for r in (fresh, first))
    assert again.test_accuracy.tolist() == before.test_accuracy.tolist()


def test_a_tier_metered_alone_starts_one_final_run_at_a_time():
    """Its final runs count metered=1 each (the train rule); the shard's command allows one at once."""
    from conftest import load_shipped

    cfg = load_shipped(REPO / shards.TIERS["tier1"])
    assert cfg["protocol"]["metering"]["alone"] is True
    cmd = shards.snakemake_cmd(shards.BY_NAME["t1-mnist-a"], cfg, 2)
    # as Snakemake reads it (regression: the targets after --resources were taken for resources)
    from snakemake.cli import get_argument_parser

    args = get_argument_parser().parse_args(cmd[1:])
    assert list(args.resources) == ["metered"] and args.resources["metered"].value == 1
    assert args.targets == shards.BY_NAME["t1-mnist-a"].targets(cfg)
    cfg["protocol"]["metering"]["alone"] = False
    assert "--resources" not in shards.snakemake_cmd(shards.BY_NAME["t1-mnist-a"], cfg, 2)


def test_the_papers_checks_run_their_own_configs_and_are_read_beside_the_papers_figure(tmp_path, monkeypatch):
    for name, tier in (("p-predsim", "check-predsim-paper"), ("p-cwcomp", "check-cwcomp-authors")):
        shard, cfg = shards.BY_NAME[name], shards.load_config(tier)
        cmd = shards.snakemake_cmd(shard, cfg, 2)
        assert cmd[cmd.index("--configfile") + 1] == str(REPO / shards.CHECKS[tier])
        assert {t.split("/")[4] for t in shard.targets(cfg)} == set(cfg["algorithms"])  # every entry, seed 0
    run = "results/runs/mnist/mlp-2x1000/local-predsim/seed0"
    dst = tmp_path / "check-predsim-paper" / run
    dst.mkdir(parents=True)
    shutil.copy2(REPO / "docs/results/field/tier1" / run / "metrics.json", dst / "metrics.json")
    epochs = pd.read_csv(REPO / "docs/results/field/tier1" / run / "epochs.csv")
    epochs["test_acc"] = [50.0 + k for k in range(len(epochs))]  # as report_test_each_epoch records it
    epochs.to_csv(dst / "epochs.csv", index=False)
    monkeypatch.setattr(shards, "committed", lambda tier: tmp_path / tier)
    (row,) = shards.check_rows()
    m = json.loads((dst / "metrics.json").read_text())
    assert row["check"] == "check-predsim-paper" and row["algorithm"] == "local-predsim"
    assert row["test accuracy (%)"] == f"{m['test_accuracy']:.2f}"
    assert row["best test epoch (%)"] == f"{50.0 + len(epochs) - 1:.2f}"
    assert row["paper's figure (its network)"] == "99.38 (MLP 3x1024)"


def test_the_field_page_is_rebuilt_where_the_data_are_not(tmp_path, monkeypatch):
    """Regression: in a fresh clone without ../shared/datasets the page's rebuild stopped at the
    tier config's data_root, and its search table named the committing checkout's absolute paths."""
    from bpfree import config as bpcfg
    from bpfree import tiers
    from bpfree.errors import ConfigError

    text = (REPO / shards.TIERS["tier2"]).read_text()
    assert "data_root: ../shared/datasets" in text
    path = tmp_path / "tier2.yaml"
    path.write_text(text.replace("data_root: ../shared/datasets", "data_root: /no/such/datasets"))
    with pytest.raises(ConfigError, match="no such folder"):
        bpcfg.load(path)
    assert shards.read_config(path)["protocol"]["seeds"] == [0, 1, 2]
    monkeypatch.chdir(tmp_path)
    assert tiers._shown(tmp_path / "docs/results/x/best.json") == "docs/results/x/best.json"
    assert tiers._shown(REPO / "x.json") == str(REPO / "x.json")
