"""Nothing stale is left behind, provenance identifies the code, suspicious but legal input warns,
and an unwritable output folder is refused before training."""
from __future__ import annotations

import copy
import json
import os
import subprocess

import pytest

from bpfree import cli, io, provenance, sources
from bpfree import config as bpcfg
from bpfree.errors import FileError
from cluster_helpers import TINY

CFG = copy.deepcopy(TINY)
CFG["protocol"]["stopping"] = {"max_epochs": 1, "patience": 1}
TRAIN = bpcfg.train_spec(CFG, "tiny", "bp")


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _train(tmp_path, digits_path, out, params=None, spec=None):
    best = tmp_path / "best.json"
    io.write_json(best, {"params": params or {"lr": 1e-3, "batch_size": 128}})
    cli.main(["train", "--spec", json.dumps(spec or TRAIN), "--data", str(digits_path), "--best", str(best),
              "--seed", "0", "--out-dir", str(out), "--threads", "1", "--checkpoint-every", "-1"])


def test_a_rerun_removes_temporary_files_of_interrupted_writes(tmp_path, digits_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    gone, live = dead_pid(), os.getppid()  # a killed save's process; one still running
    stale = [out / f".checkpoint.pt.{gone}.tmp", out / f".metrics.json.{gone}.tmp"]
    kept = [out / f".epochs.csv.{live}.tmp", out / f".notes.txt.{gone}.tmp"]  # alive; not this job's output
    for f in stale + kept:
        f.write_bytes(b"x" * 100)
    _train(tmp_path, digits_path, out)
    assert not any(f.exists() for f in stale) and all(f.exists() for f in kept)
    err = capsys.readouterr().err
    assert all(f"removed {f}, left by an interrupted write" in err for f in stale)
    assert (out / "metrics.json").exists()


def test_report_and_search_remove_their_stale_temporary_files(tmp_path):
    gone = dead_pid()
    csv, png = tmp_path / f".to_target.csv.{gone}.tmp", tmp_path / "plots" / f".to_target.png.{gone}.png"
    png.parent.mkdir()
    for f in (csv, png):
        f.write_text("x")
    assert set(io.remove_stale_tmp([tmp_path / "to_target.csv", tmp_path / "plots" / "to_target.png"])) == {csv, png}


def test_unwritable_output_folder_is_refused_before_training(tmp_path, digits_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as e:
        _train(tmp_path, digits_path, blocker / "run")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"cannot write to the output folder {blocker / 'run'}" in err
    assert "epoch" not in err  # refused before the first epoch
    with pytest.raises(FileError, match="cannot write"):
        io.check_writable(blocker)


def test_provenance_hashes_every_source_the_result_depends_on(tmp_path, digits_path):
    out = tmp_path / "run"
    _train(tmp_path, digits_path, out)
    prov = json.loads((out / "metrics.json").read_text())["provenance"]
    names = set(prov["sources"])
    assert {"bpfree/algorithms/bp.py", "bpfree/hparams.py", "bpfree/errors.py", "bpfree/checkpoint.py",
            "bpfree/engine.py", "bpfree/algorithms/base.py", "bpfree/train.py", "bpfree/metering/meter.py",
            "bpfree/metering/segments.py"} <= names
    assert prov["sources"]["bpfree/engine.py"] == sources.hashes("bp")["bpfree/engine.py"]
    assert len(prov["sources"]["bpfree/algorithms/bp.py"]) == 64
    assert "changed_during_run" not in prov


def edit_after_the_first_read(monkeypatch, name: str):
    """Make every read of the source hashes after the first see `name` edited; return the real reader."""
    real, calls = sources.hashes, []

    def hashes(impl, extra=()):
        calls.append(impl)
        h = real(impl, extra)
        return h if len(calls) == 1 else {**h, name: "0" * 64}

    monkeypatch.setattr(sources, "hashes", hashes)
    return real


def test_provenance_records_the_code_at_the_start_and_an_edit_made_while_the_job_ran(
        tmp_path, digits_path, capsys, monkeypatch):
    """Regression: provenance was collected when metrics.json was written, so a source file edited
    while a job ran was recorded as the code that produced its result."""
    real = edit_after_the_first_read(monkeypatch, "bpfree/engine.py")
    out = tmp_path / "run"
    _train(tmp_path, digits_path, out)
    prov = json.loads((out / "metrics.json").read_text())["provenance"]
    assert prov["sources"]["bpfree/engine.py"] == real("bp")["bpfree/engine.py"]  # what ran
    assert prov["changed_during_run"]["files"] == ["bpfree/engine.py"]
    assert "bpfree/engine.py changed while this job ran" in capsys.readouterr().err


def test_search_provenance_is_the_code_at_its_start(tmp_path, digits_path, capsys, monkeypatch):
    real = edit_after_the_first_read(monkeypatch, "bpfree/search.py")
    spec = bpcfg.search_spec(CFG, "tiny", "bp")
    best = tmp_path / "best.json"
    cli.main(["search", "--spec", json.dumps(spec), "--data", str(digits_path), "--journal",
              str(tmp_path / "j.log"), "--best", str(best), "--threads", "1"])
    prov = json.loads(best.read_text())["provenance"]
    assert prov["sources"]["bpfree/search.py"] == real("bp", ("search.py",))["bpfree/search.py"]
    assert prov["changed_during_run"]["files"] == ["bpfree/search.py"]
    assert "bpfree/search.py changed while this job ran" in capsys.readouterr().err


def test_workflow_and_package_share_one_core_list():
    common = (sources.checkout() / "workflow" / "rules" / "common.smk").read_text()
    assert "CORE_SRC = [str(f) for f in bpsources.core(SRC)]" in common
    assert {"checkpoint.py", "hparams.py", "errors.py"} <= set(sources.CORE)
    assert all(f.exists() for f in sources.core())


def test_git_dirty_counts_untracked_files_in_the_package_tree(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    monkeypatch.setattr(sources, "checkout", lambda: repo)
    provenance.git.cache_clear()
    try:
        assert provenance.git()["git_dirty"] is False
        (repo / "src" / "new_algo.py").write_text("y = 2\n")  # untracked, not ignored
        provenance.git.cache_clear()
        assert provenance.git()["git_dirty"] is True
    finally:
        provenance.git.cache_clear()


def test_suspicious_but_legal_input_warns_in_the_log(tmp_path, digits_path, capsys):
    spec = {**TRAIN, "limit_train": 200}
    _train(tmp_path, digits_path, tmp_path / "run", params={"lr": 1e-3, "batch_size": 512}, spec=spec)
    err = capsys.readouterr().err
    assert "warning: batch_size = 512 is larger than the training split (200 examples)" in err
    assert "warning: limit_train = 200 leaves 200 training examples" in err
    search_spec = {**bpcfg.search_spec(CFG, "tiny", "bp"), "limit_train": 200}
    search_spec["fixed"] = {"batch_size": 4096}
    cli.main(["search", "--spec", json.dumps(search_spec), "--data", str(digits_path), "--journal",
              str(tmp_path / "s.journal"), "--n-trials", "1", "--threads", "1"])
    err = capsys.readouterr().err
    assert "warning: batch_size = 4096 is larger" in err and "warning: limit_train = 200" in err
