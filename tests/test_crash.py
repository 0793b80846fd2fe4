"""Crash safety through the workflow: SIGKILL (Snakemake and its job together, as a node failure or
a scancel does) a search after some trials finished, and a final run mid-training; the rerun keeps
every finished trial and reaches the budget, and the killed run resumes from its checkpoint to the
same result as an uninterrupted run."""
from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from bpfree import study as studies
from bpfree.journal import storage
from cluster_helpers import BIN, TINY, env, make_repo, snakemake

pytestmark = pytest.mark.slow
CELL = "results/search/digits/tiny/bp"
RUN = "results/runs/digits/tiny/bp/seed0"


def _kill_when(root: Path, target: str, log: Path, ready, extra_env: dict | None = None, limit: float = 300) -> None:
    """Start `snakemake target` in its own process group; SIGKILL the whole group once
    `ready(log text)` holds. Fails if the workflow ends before that."""
    p = subprocess.Popen([str(BIN / "snakemake"), "--nolock", "--cores", "1", target], cwd=root,
                         env={**env(), **(extra_env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    t0 = time.monotonic()
    try:
        while not (log.exists() and ready(log.read_text())):
            text = log.read_text() if log.exists() else ""
            assert p.poll() is None, f"the workflow ended before the kill point; log:\n{text}"
            assert time.monotonic() - t0 < limit, "kill point not reached"
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _journal(root: Path) -> Path:
    (j,) = (root / CELL).glob("study-*.journal")
    return j


def test_killed_search_resumes_and_keeps_finished_trials(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["comparisons"][0]["algorithms"] = ["bp"]
    cfg["protocol"]["search"] = {"n_trials": 8, "workers": 1}
    cfg["protocol"]["stopping"] = {"max_epochs": 10, "patience": 10}
    cfg["algorithms"]["bp"]["fixed"]["batch_size"] = 32
    root = make_repo(tmp_path / "repo", cfg)
    log = root / "logs/search/digits/tiny/bp/worker0.log"
    _kill_when(root, f"{CELL}/best.json", log,
               lambda text: len(re.findall(r"\] trial \d+ (complete|pruned)", text)) >= 2)

    study = optuna.load_study(study_name="search", storage=storage(_journal(root)))
    before = {t.number: (t.state, t.params, t.value) for t in study.get_trials() if t.state in studies.FINISHED}
    running = [t.number for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert 2 <= len(before) < 8, "the kill came too late to test a resume"
    assert not (root / f"{CELL}/best.json").exists()

    snakemake(root, "--cores", "1", f"{CELL}/best.json")
    study = optuna.load_study(study_name="search", storage=storage(_journal(root)))
    after = {t.number: t for t in study.get_trials()}
    for n, (state, params, value) in before.items():  # every finished trial kept as it was
        assert (after[n].state, after[n].params, after[n].value) == (state, params, value)
    for n in running:  # the trial the kill interrupted is failed, not counted
        assert after[n].state == optuna.trial.TrialState.FAIL
    assert sum(t.state in studies.FINISHED for t in after.values()) == 8
    points = [json.dumps(t.params, sort_keys=True) for t in after.values() if t.state in studies.FINISHED]
    assert len(set(points)) == 8, "the resumed search drew an earlier trial's point again"
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in after.values())
    best = json.loads((root / f"{CELL}/best.json").read_text())
    assert best["n_trials"] == 8 and best["trial_states"]["fail"] == len(running)
    assert "marked" in (root / "logs/search/digits/tiny/bp/worker0.log").read_text() or not running


def test_killed_final_run_resumes_from_its_checkpoint(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["comparisons"][0]["algorithms"] = ["bp"]
    cfg["algorithms"] = {"bp": {"impl": "bp", "fixed": {"batch_size": 32, "lr": 3e-3, "weight_decay": 1e-4}}}
    cfg["protocol"]["search"] = {"n_trials": 0}
    cfg["protocol"]["stopping"] = {"max_epochs": 30, "patience": 30}  # runs every epoch
    root = make_repo(tmp_path / "repo", cfg)
    every_epoch = {"BPFREE_CHECKPOINT_EVERY": "0"}
    log = root / "logs/train/digits/tiny/bp/seed0.log"
    _kill_when(root, f"{RUN}/metrics.json", log, lambda text: "epoch   5/" in text, extra_env=every_epoch)
    assert (root / f"{RUN}/checkpoint.pt").exists() and not (root / f"{RUN}/metrics.json").exists()

    snakemake(root, "--cores", "1", f"{RUN}/metrics.json", extra_env=every_epoch)
    m = json.loads((root / f"{RUN}/metrics.json").read_text())
    assert m["resumed"] and m["resume"]["from_epoch"] >= 4 and m["epochs"] == 30
    assert not (root / f"{RUN}/checkpoint.pt").exists()
    resumed = pd.read_csv(root / f"{RUN}/epochs.csv")
    assert list(resumed.epoch) == list(range(1, 31))
    assert m["provenance"]["git_commit"] is not None or m["provenance"]["git_dirty"] is None
    assert len(m["provenance"]["spec_sha256"]) == 64

    # the same run without interruption (outside Snakemake) reaches the same result, epoch by epoch
    ref = tmp_path / "ref"
    spec = subprocess.run([str(BIN / "bpfree"), "spec", "--config", str(root / "config/config.yaml"),
                           "--architecture", "tiny", "--algorithm", "bp"], env=env(), capture_output=True,
                          text=True, check=True).stdout
    subprocess.run([str(BIN / "bpfree"), "train", "--spec", spec, "--data", str(root / "resources/data/digits.pt"),
                    "--best", str(root / f"{CELL}/best.json"), "--seed", "0", "--out-dir", str(ref), "--threads", "1",
                    "--checkpoint-every", "-1"], env=env(), capture_output=True, text=True, check=True)
    plain = pd.read_csv(ref / "epochs.csv")
    assert (plain.train_loss.values == resumed.train_loss.values).all()
    assert (plain.val_acc.values == resumed.val_acc.values).all()
    assert json.loads((ref / "metrics.json").read_text())["test_accuracy"] == m["test_accuracy"]


def _train(cfg_path: Path, data: Path, best: Path, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "bpfree"), "train", "--config", str(cfg_path), "--architecture", "wide",
                             "--algorithm", "bp", "--data", str(data), "--best", str(best), "--seed", "0",
                             "--out-dir", str(out), "--threads", "1", "--checkpoint-every", "0"],
                            env=env(), stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)


def test_resumed_run_reports_time_and_energy_of_all_its_processes(tmp_path):
    """SIGKILL a `bpfree train` half-way, rerun it: its time and energy are within 10 % of the same
    run uninterrupted, per second of training computation (the engine's own per-epoch seconds: on
    this shared machine two identical runs differ by up to 25 % in wall time, the same run's meter
    and engine do not), where the resumed process alone metered about half."""
    from bpfree.datasets import prepare

    cfg = copy.deepcopy(TINY)
    cfg["architectures"] = {"wide": {"type": "mlp", "widths": [512, 512]}}
    cfg["comparisons"] = [{"architecture": "wide", "algorithms": ["bp"]}]
    # every entry is checked, used or not: bp's settings fixed, no search, no unused mf entry
    cfg["algorithms"] = {"bp": {"impl": "bp", "fixed": {"batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4}}}
    cfg["protocol"]["search"] = {"n_trials": 0}
    cfg["protocol"]["stopping"] = {"max_epochs": 20, "patience": 20}  # every epoch runs: the same work
    cfg["protocol"]["metering"] = {"estimate_interval_s": 0.5}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    data, best = tmp_path / "digits.pt", tmp_path / "best.json"
    prepare("digits", None, data)
    best.write_text(json.dumps({"params": cfg["algorithms"]["bp"]["fixed"]}))

    ref, ref_log = tmp_path / "ref", tmp_path / "ref.log"
    p = _train(tmp_path / "config.yaml", data, best, ref, ref_log)
    assert p.wait(timeout=300) == 0, ref_log.read_text()
    run, log = tmp_path / "killed", tmp_path / "killed.log"
    p = _train(tmp_path / "config.yaml", data, best, run, log)
    t0 = time.monotonic()
    while "epoch  10/" not in log.read_text():
        assert p.poll() is None and time.monotonic() - t0 < 300, log.read_text()
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert (run / "checkpoint.pt").exists() and not (run / "metrics.json").exists()
    p = _train(tmp_path / "config.yaml", data, best, run, tmp_path / "resumed.log")
    assert p.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()

    m, r = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    ep, ep_ref = pd.read_csv(run / "epochs.csv"), pd.read_csv(ref / "epochs.csv")
    assert m["resumed"] and m["segments"] == 2 and m["resume"]["from_epoch"] >= 8 and m["epochs"] == 20
    assert not r["resumed"] and r["segments"] == 1 and r["resume"] is None
    assert m["energy_method"] == r["energy_method"] and m["energy_j"] is not None
    work, work_ref = ep.seconds.sum(), ep_ref.seconds.sum()
    for key in ("train_time_s", "energy_j"):
        assert m[key] / work == pytest.approx(r[key] / work_ref, rel=0.10), (key, m[key], work, r[key], work_ref)
    # what the resumed process alone metered (all that the summary used to report) is far from it
    last = m["train_time_s"] - m["resume"]["earlier_train_time_s"]
    assert last / work < 0.75 * r["train_time_s"] / work_ref
    assert list(ep.segment.unique()) == [1, 2] and ep.metered.iloc[0] == "provisional mark of process 1"
    assert (ep[ep.segment == 2].metered == "final").all()
    assert ep.elapsed_s.is_monotonic_increasing and ep.cum_energy_j.is_monotonic_increasing
    assert ep.elapsed_s.iloc[-1] == pytest.approx(m["train_time_s"], rel=0.02)
