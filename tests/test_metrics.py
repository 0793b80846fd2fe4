"""docs/adding-a-metric.md: a quantity an algorithm reports per epoch reaches epochs.csv, one it
reports per run reaches metrics.json and, through `bpfree report`, summary.csv and cells.csv."""
from __future__ import annotations

import copy
import json
import re
import subprocess

import pandas as pd
import pytest
import torch
import yaml

from bpfree.algorithms.base import Algorithm, Stage
from bpfree.data import Data
from bpfree.engine import Stopping, fit

from cluster_helpers import REPO, TINY, env

GUIDE = REPO / "docs" / "adding-a-metric.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), re.S)


def test_the_guides_example_reaches_epochs_csv_metrics_json_and_the_summary(tmp_path):
    (tmp_path / "mylab").mkdir()
    (tmp_path / "mylab" / "top2.py").write_text(_blocks("python")[0])
    cfg = copy.deepcopy(TINY)
    cfg["algorithms"].update(yaml.safe_load(_blocks("yaml")[0])["algorithms"])
    cfg["comparisons"] = [{"architecture": "tiny", "algorithms": ["bp", "bp-top2"]}]
    cfg["protocol"]["stopping"] = {"max_epochs": 3, "patience": 3}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "best.json").write_text(json.dumps({"params": {"batch_size": 128, "lr": 3e-3, "weight_decay": 1e-4}}))
    run_env = {**env(), "PYTHONPATH": str(tmp_path)}

    def bpfree(*args: str) -> None:
        p = subprocess.run(["bpfree", *args], cwd=tmp_path, env=run_env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr

    bpfree("prepare", "--dataset", "digits", "--out", "digits.pt")
    bpfree("train", "--config", "config.yaml", "--architecture", "tiny", "--algorithm", "bp-top2",
           "--data", "digits.pt", "--best", "best.json", "--seed", "0", "--out-dir", "run", "--threads", "1")
    epochs = pd.read_csv(tmp_path / "run" / "epochs.csv")
    assert len(epochs) == 3
    assert ((epochs.val_top2 >= epochs.val_acc) & (epochs.val_top2 <= 100)).all()  # top-2 is never below top-1
    assert (epochs.weight_norm > 0).all() and epochs.weight_norm.nunique() == 3  # the weights moved every epoch
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_top2_accuracy"] >= metrics["val_accuracy"]
    # the algorithm's own memory beside the process peak: weights and Adam's two moments, float32
    assert metrics["state_memory_mib"] == pytest.approx(3 * 4 * metrics["n_params"] / 2 ** 20, rel=0.05)
    assert 0 <= metrics["rss_growth_mib"] <= metrics["peak_memory_mib"]
    # the example's epoch_metrics (the weights' norm) is a diagnostic: out of the metered time
    assert metrics["diagnostics_s"] > 0 and metrics["train_time_s"] >= epochs.seconds.sum()
    bpfree("report", "--out-dir", "report", "run/metrics.json")
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert summary.val_top2_accuracy.tolist() == [metrics["val_top2_accuracy"]]
    cells = pd.read_csv(tmp_path / "report" / "cells.csv")
    assert cells.val_top2_accuracy_mean.tolist() == pytest.approx([metrics["val_top2_accuracy"]])


class Reporter(Algorithm):
    """A stand-in that reports what the test tells it to (no learning)."""
    LOCALITY, ARCHITECTURES = "closed-form", ("mlp",)

    def __init__(self, epoch_metrics: dict):
        self.device, self.net, self.extra = torch.device("cpu"), torch.nn.Linear(1, 1), epoch_metrics

    def stages(self):
        return [Stage("all", epochs=2)]

    def train_epoch(self, stage, data, gen):
        return torch.zeros(())

    def validate(self, stage, data):
        return {"loss": 1.0, "acc": 50.0, "calibration": 0.25}

    def epoch_metrics(self, stage, data):
        return self.extra

    def predict(self, x):
        return torch.zeros(len(x), 2)

    def cost(self, stage):
        from bpfree.algorithms.base import Cost
        return Cost(0, 0)


def _data() -> Data:
    x, y = torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)
    return Data(x, y, x, y, x, y, {})


def test_extra_validation_keys_and_epoch_metrics_become_columns_after_the_engines():
    res = fit(Reporter({"angle": 0.5}), _data(), Stopping(max_epochs=2, patience=2), seed=0)
    assert list(res.history[0]) == ["epoch", "stage", "stage_epoch", "train_loss", "val_acc", "val_loss",
                                    "val_calibration", "seconds", "cpu_s", "load_1m", "since_best", "angle"]
    assert [r["angle"] for r in res.history] == [0.5, 0.5]


def test_an_epoch_metric_may_not_overwrite_an_engine_column():
    with pytest.raises(ValueError, match="train_loss would overwrite"):
        fit(Reporter({"train_loss": 0.0}), _data(), Stopping(max_epochs=2, patience=2), seed=0)
