"""The prepared GPU check of searches packed per GPU (bench/gpu_field.sh): valid bash, and its table
from the workers' journals and nvidia-smi's samples, on the CPU (the GPU path has not run here)."""
from __future__ import annotations

import datetime
import importlib.util
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

BENCH = Path(__file__).resolve().parents[1] / "bench"
SPEC = importlib.util.spec_from_file_location("gpu_field_summary", BENCH / "gpu_field_summary.py")
summary = sys.modules.setdefault("gpu_field_summary", importlib.util.module_from_spec(SPEC))
SPEC.loader.exec_module(summary)


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(BENCH / "gpu_field.sh")], check=True)


def _arm(folder: Path, slots: int, wall_s: float, trial_s: float, smi: str = "") -> Path:
    """A finished arm: `slots` journals of two 4-epoch trials of `trial_s` seconds each (one pruned)."""
    folder.mkdir()
    (folder / "slots").write_text(f"{slots}\n")
    (folder / "wall_s").write_text(f"{wall_s}\n")
    (folder / "smi.csv").write_text(smi)
    t0 = datetime.datetime(2026, 12, 7, 12, 0, 0)
    for k in range(1, slots + 1):
        path = str(folder / f"w{k}.journal")
        storage = optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
        study = optuna.create_study(study_name="search", storage=storage, direction="maximize")
        for state, value in ((optuna.trial.TrialState.COMPLETE, 90.0), (optuna.trial.TrialState.PRUNED, None)):
            t = optuna.trial.create_trial(state=state, value=value, intermediate_values={i: 80.0 + i for i in range(4)},
                                          user_attrs={"epochs": 4}, params={}, distributions={})
            t.datetime_start, t.datetime_complete = t0, t0 + datetime.timedelta(seconds=trial_s)
            study.add_trial(t)
    return folder


def test_the_table_compares_packed_workers_with_one_per_gpu(tmp_path):
    one = _arm(tmp_path / "slots1", 1, 100.0, 10.0, "50, 200.5, 1000\n60, 210.5, 1200\n[N/A], [N/A], [N/A]\n")
    two = _arm(tmp_path / "slots2", 2, 120.0, 12.0)
    rows = [summary.arm(one), summary.arm(two)]
    assert [r["trials"] for r in rows] == [2, 4]  # complete and pruned both count
    assert rows[0]["trials_per_h"] == pytest.approx(72.0) and rows[1]["trials_per_h"] == pytest.approx(120.0)
    assert rows[1]["workers_per_h"] == pytest.approx(60.0)
    assert rows[0]["s_per_epoch"] == pytest.approx(2.5) and rows[1]["s_per_epoch"] == pytest.approx(3.0)
    assert rows[0]["gpu_util_pct"] == pytest.approx(55.0) and rows[0]["memory_mib"] == 1200
    assert rows[1]["gpu_util_pct"] is None  # no samples (a CPU run)
    text = summary.table(rows)
    assert "| 2 | 120.0 | 4 | 120.0 | 1.67x |" in text and "| n/a | n/a | n/a |" in text
