"""Metered final runs alone on their host or device (bpfree.alone): the lock is shared by search
workers and runs without `alone`, exclusive for an alone run, and a waiting alone run goes before
readers that come after it; two `bpfree train` processes with `alone` never overlap, and the
second reuses the first's idle baseline."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cluster_helpers import TINY, env

from bpfree import alone
from bpfree import config as bpcfg


def _enter_later(hold: alone.Hold) -> threading.Event:
    """Enter `hold` in a thread; the event is set once it holds the lock."""
    got = threading.Event()

    def run():
        hold.__enter__()
        got.set()

    threading.Thread(target=run, daemon=True).start()
    return got


def test_shared_holders_coexist_and_an_exclusive_one_waits_for_them(tmp_path, capsys):
    with alone.Hold("cpu", False, "search a", tmp_path) as a, alone.Hold("cpu", False, "train b", tmp_path) as b:
        assert a.waited_s < 0.5 and b.waited_s < 0.5 and not a.record()["metered_alone"]
        writer = alone.Hold("cpu", True, "train c", tmp_path)
        got = _enter_later(writer)
        assert not got.wait(0.3)  # two shared holders: the alone run waits
        b.__exit__()
        assert not got.wait(0.2)
    assert got.wait(5)
    assert writer.waited_s >= 0.4 and writer.record() == {"metered_alone": True, "alone_wait_s": writer.waited_s}
    line = capsys.readouterr().err.strip().splitlines()[0]
    assert "train c waits to run alone" in line and "search a" in line and "train b" in line  # what it waits for
    reader = alone.Hold("cpu", False, "search d", tmp_path)
    got = _enter_later(reader)
    assert not got.wait(0.3)  # the alone run holds the host: nothing else starts
    writer.__exit__()
    assert got.wait(5)
    reader.__exit__()
    with alone.Hold("gpu1", True, "train e", tmp_path) as e:  # another device: not held by the above
        assert e.waited_s < 0.5


def test_a_waiting_alone_run_goes_before_readers_that_come_after_it(tmp_path):
    first = alone.Hold("cpu", False, "search 1", tmp_path).__enter__()
    writer = alone.Hold("cpu", True, "train", tmp_path)
    w = _enter_later(writer)
    time.sleep(0.2)
    late = alone.Hold("cpu", False, "search 2", tmp_path)
    r = _enter_later(late)
    assert not r.wait(0.3)  # a reader alone would share with `first`; it queues behind the waiting writer
    first.__exit__()
    assert w.wait(5) and not r.wait(0.3)
    writer.__exit__()
    assert r.wait(5)
    late.__exit__()


def test_device_keys_name_the_physical_gpu(monkeypatch):
    """A GPU is named by its UUID where torch gives one, else by its CUDA_VISIBLE_DEVICES entry (the
    device a pinned job took), so that every job on one GPU uses the same lock."""
    assert alone.device_key(torch.device("cpu")) == "cpu"
    props = type("Props", (), {})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert alone.device_key(torch.device("cuda:0")) == "gpu3"
    props.uuid = "GPU-1a2b/3c"
    assert alone.device_key(torch.device("cuda:0")) == "gpuGPU-1a2b3c"


def _train(tmp: Path, spec: Path, digits: Path, best: Path, seed: int, overlap: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bpfree", "train", "--spec", f"@{spec}", "--data", str(digits),
                             "--best", str(best), "--seed", str(seed), "--out-dir", str(tmp / f"run{seed}"),
                             "--overlap-dir", str(overlap), "--checkpoint-every", "-1", "--threads", "1"],
                            env={**env(), "BPFREE_METERED_LOCK_DIR": str(tmp / "locks")}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _pair(tmp: Path, digits: Path, alone_: bool) -> tuple[list[dict], list[dict]]:
    """Two final runs started at once on one overlap folder: their metrics and window records."""
    cfg = copy.deepcopy(TINY)
    cfg["protocol"]["stopping"] = {"max_epochs": 1, "patience": 1}
    cfg["protocol"]["metering"] = {"alone": alone_, "idle_seconds": 0.5, "estimate_interval_s": 1}
    bpcfg.validate(cfg)
    spec, best = tmp / "spec.json", tmp / "best.json"
    spec.write_text(bpcfg.dumps(bpcfg.train_spec(cfg, "tiny", "bp")))
    best.write_text('{"params": {"lr": 0.003, "weight_decay": 0.0, "batch_size": 128}}')
    procs = [_train(tmp, spec, digits, best, seed, tmp / "metered") for seed in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    metrics = [json.loads((tmp / f"run{s}" / "metrics.json").read_text()) for s in (0, 1)]
    windows = sorted((json.loads(f.read_text()) for f in (tmp / "metered").glob("*.json")), key=lambda r: r["start"])
    return metrics, windows


@pytest.mark.parametrize("alone_", [True, False])
def test_two_final_runs_started_at_once(tmp_path, digits_path, alone_):
    metrics, (a, b) = _pair(tmp_path, digits_path, alone_)
    assert [m["metered_alone"] for m in metrics] == [alone_, alone_]
    if alone_:  # one waited for the other: their windows do not overlap, and neither names the other
        assert a["end"] <= b["start"]
        assert [m["overlapped_with"] for m in metrics] == [[], []]
        assert max(m["alone_wait_s"] for m in metrics) > 0.5
        # the later run reused the earlier one's idle baseline (measured alone), and did not idle
        first, second = sorted(metrics, key=lambda m: m["idle_reused"])
        assert not first["idle_reused"] and second["idle_reused"] and 0 <= second["idle_age_s"] < 300
        assert second["idle_measured_by"] == f"digits/tiny/bp seed {first['seed']}"
        assert second["idle_power_w"] == pytest.approx(first["idle_power_w"])
    else:  # neither waits; runs whose windows overlapped name each other
        assert all(m["alone_wait_s"] < 1.0 for m in metrics)
        overlapped = a["end"] > b["start"]
        assert [bool(m["overlapped_with"]) for m in metrics] == [overlapped, overlapped]
