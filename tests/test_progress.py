"""Progress lines a person can follow: each epoch says what is left before the stage's cap and
before patience runs out; each trial says how many of the budget are done and the time left."""
from __future__ import annotations

import io

from bpfree.progress import Progress, duration


def rec(epoch: int, since_best: int | None, seconds: float = 6.0) -> dict:
    return {"stage": "all", "stage_epoch": epoch, "train_loss": 0.1, "val_acc": 97.0, "val_loss": 0.2,
            "seconds": seconds, "since_best": since_best}


def test_epoch_line_says_epochs_since_best_and_time_to_a_stop_and_to_the_cap():
    out = io.StringIO()
    log = Progress("train mnist/mlp/bp seed=0", stream=out)
    log.epoch(rec(1, 0), cap=50, patience=10)
    log.epoch(rec(2, 3, seconds=4.0), cap=50, patience=10)  # mean epoch 5 s
    first, second = out.getvalue().splitlines()
    assert "epoch   1/50" in first
    assert "best 0 ago (patience 10): stops in 10 (60 s) without a gain, at most 49" in first
    assert "best 3 ago (patience 10): stops in 7 (35 s) without a gain, at most 48 (4 min)" in second


def test_fixed_epoch_stage_says_only_what_is_left():
    out = io.StringIO()
    Progress("x", stream=out).epoch(rec(3, None), cap=5, patience=10)
    assert out.getvalue().rstrip().endswith("2 left (12 s)")


def test_durations_read_as_a_person_reads_them():
    assert [duration(s) for s in (45, 600, 9000)] == ["45 s", "10 min", "2.5 h"]
