"""Metered runs that share a host say so: each run's window is recorded (bpfree.overlap), a run
names the others whose windows overlapped its own, and the report flags those cells."""
from __future__ import annotations

import json
import os
import time

import pandas as pd

from bpfree import overlap
from bpfree.report.notes import notes
from bpfree.stats import StatsConfig


def test_overlapping_windows_name_each_other_and_sequential_ones_do_not(tmp_path):
    a, b = overlap.Window(tmp_path, "mnist/mlp/bp seed 0"), overlap.Window(tmp_path, "mnist/mlp/fa seed 0")
    a.open()
    b.open()
    assert a.close() == ["mnist/mlp/fa seed 0"]  # b still runs
    assert b.close() == ["mnist/mlp/bp seed 0"]  # a ran during b's window
    c = overlap.Window(tmp_path, "mnist/mlp/dfa seed 0")
    c.open()
    assert c.close() == []  # a and b had ended


def test_a_killed_run_counts_until_its_record_was_last_written(tmp_path):
    killed = tmp_path / "host-1-1.json"
    killed.write_text(json.dumps({"label": "killed", "host": overlap.socket.gethostname(), "pid": 2 ** 22 + 7,
                                  "start": time.time() - 100, "end": None}))
    os.utime(killed, (time.time() - 50, time.time() - 50))  # the process died 50 s ago
    w = overlap.Window(tmp_path, "later")
    w.open()
    assert w.close() == []


def test_the_report_flags_cells_whose_runs_overlapped():
    runs = pd.DataFrame({"dataset": ["mnist"] * 2, "architecture": ["mlp"] * 2, "algorithm": ["fa"] * 2,
                         "seed": [0, 1], "test_accuracy": [97.0, 97.5], "overlaps": [1, 0]})
    text = notes(runs, pd.DataFrame({"duplicate_seeds": []}), pd.DataFrame(columns=["dataset", "architecture",
                                                                                    "algorithm", "n_pairs", "note"]),
                 StatsConfig.from_dict({}))
    assert "mnist/mlp/fa: 1 of 2 runs shared their host with other metered runs" in text
