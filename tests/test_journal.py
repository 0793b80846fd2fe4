"""The Optuna journal survives a torn write: a cut-off last record is repaired (and said) by the
resuming worker, which finishes the budget; the study then collects. A corrupt record before the
last line stops every command with the journal's path and the line number (exit status 2)."""
from __future__ import annotations

import copy
import json

import optuna
import pytest

from bpfree import cli
from bpfree import study as studies
from bpfree.journal import storage
from bpfree import config as bpcfg
from cluster_helpers import TINY

CFG = copy.deepcopy(TINY)
CFG["protocol"]["search"] = {"n_trials": 3, "workers": 1, "pruner": {"type": "none"}}
CFG["protocol"]["stopping"] = {"max_epochs": 1, "patience": 1}
SPEC = bpcfg.search_spec(CFG, "tiny", "bp")


def _search(tmp_path, digits_path, journal, *extra: str) -> None:
    cli.main(["search", "--spec", json.dumps(SPEC), "--data", str(digits_path), "--journal", str(journal),
              "--threads", "1", *extra])


def _finished(journal) -> int:
    study = optuna.load_study(study_name="search", storage=storage(journal))
    return len(study.get_trials(deepcopy=False, states=studies.FINISHED))


def test_torn_last_line_is_repaired_and_the_study_finishes(tmp_path, digits_path, capsys):
    journal = tmp_path / "study.journal"
    _search(tmp_path, digits_path, journal, "--n-trials", "2")
    assert _finished(journal) == 2
    lines = journal.read_bytes().splitlines(keepends=True)
    torn = lines[-1][: len(lines[-1]) // 2]  # a record cut off mid-write, no newline
    journal.write_bytes(b"".join(lines) + torn)
    capsys.readouterr()
    _search(tmp_path, digits_path, journal)  # resumes: the whole budget of 3
    err = capsys.readouterr().err
    assert f"repaired the study journal {journal}: removed its last line ({len(torn)} bytes" in err
    assert journal.read_bytes().startswith(b"".join(lines)) and journal.read_bytes().endswith(b"\n")
    assert _finished(journal) == 3
    best = tmp_path / "best.json"
    _search(tmp_path, digits_path, journal, "--collect", "--best", str(best))
    assert json.loads(best.read_text())["n_trials"] == 3


def test_complete_last_record_without_its_newline_is_kept(tmp_path, digits_path):
    journal = tmp_path / "study.journal"
    _search(tmp_path, digits_path, journal, "--n-trials", "1")
    text = journal.read_bytes()
    journal.write_bytes(text[:-1])  # only the newline of the last record lost
    n = _finished(journal)
    storage(journal)  # opening repairs under the lock
    assert journal.read_bytes() == text and _finished(journal) == n == 1


def test_corrupt_middle_line_stops_with_path_and_line(tmp_path, digits_path, capsys):
    journal = tmp_path / "study.journal"
    _search(tmp_path, digits_path, journal, "--n-trials", "1")
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:10] + b"\n"  # what an older bpfree left: a torn record glued to the next
    capsys.readouterr()
    journal.write_bytes(b"".join(lines))
    for extra in ((), ("--collect", "--best", str(tmp_path / "best.json"))):
        with pytest.raises(SystemExit) as e:
            _search(tmp_path, digits_path, journal, *extra)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"study journal {journal}: line 3 of {len(lines)} is corrupt" in err[0]
        assert f"head -n 2 {journal}" in err[0]
