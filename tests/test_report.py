"""The report: tables and plots from a results tree, the published numbers beside ours, and the
self-contained HTML of `snakemake --report` with every figure embedded."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bpfree import cli, published, report

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def fake_run(root: Path, dataset: str, arch: str, alg: str, seed: int, acc: float, *, layers: int = 0,
             epochs: int = 6) -> Path:
    """A finished run's metrics.json and epochs.csv in the layout of the workflow. Made-up numbers:
    this exercises the report, not the training."""
    rng = np.random.default_rng(hash((dataset, arch, alg, seed)) % 2**32)
    out = root / "results" / "runs" / dataset / arch / alg / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    sec = rng.uniform(0.5, 1.0, epochs)
    joules = 12.0 * sec
    val = acc - 8 * np.exp(-np.arange(1, epochs + 1) / 1.5)
    pd.DataFrame({"epoch": range(1, epochs + 1), "stage": "all", "stage_epoch": range(1, epochs + 1),
                  "train_loss": np.linspace(1, 0.1, epochs), "val_acc": val, "val_loss": np.linspace(1, 0.2, epochs),
                  "seconds": sec, "energy_j": joules}).to_csv(out / "epochs.csv", index=False)
    m = {"dataset": dataset, "architecture": arch, "algorithm": alg, "impl": alg.split("-")[0], "seed": seed,
         "test_accuracy": acc, "val_accuracy": float(val.max()), "epochs": epochs, "best_epoch": epochs,
         "epoch_cap": 30, "patience": 5, "train_time_s": float(sec.sum()), "energy_j": float(joules.sum()),
         "energy_dynamic_j": float(joules.sum() * 0.4), "energy_method": "estimate",
         "energy_components": {"cpu": {"j": float(joules.sum() * 0.3), "method": "estimate"},
                               "dram": {"j": float(joules.sum() * 0.7), "method": "estimate"}},
         "peak_memory_mib": 400.0 + rng.uniform(0, 5), "peak_memory_method": "ru_maxrss", "device": "cpu",
         "hyperparameters": {"lr": 1e-3}, "n_params": 1000, "train_flops": 1e9, "predict_flops": 1e4,
         "layer_test_accuracy": {f"layer{i + 1}": acc - 3 + i for i in range(layers)}}
    (out / "metrics.json").write_text(json.dumps(m))
    return out / "metrics.json"


def fake_tree(root: Path) -> list[Path]:
    files = []
    for s in range(4):
        files.append(fake_run(root, "mnist", "mlp-2x1000", "bp", s, 98.0 + 0.1 * s))
        files.append(fake_run(root, "mnist", "mlp-2x1000", "mf", s, 98.2 + 0.1 * s, layers=2))
    files.append(fake_run(root, "mnist", "mlp-2x1000", "ff-adamw", 7, 97.0, layers=2))   # no common seed
    files.append(fake_run(root, "mnist", "mlp-2x1000", "cafo-rand-ce", 0, 97.5, layers=3))  # one seed
    return files


def test_report_tables_plots_and_published_values(tmp_path):
    files = fake_tree(tmp_path)
    out = tmp_path / "out"
    runs = report.run_report(files, out, {"resamples": 500, "seed": 1})
    assert len(runs) == 10
    for name in ("summary.csv", "cells.csv", "deltas.csv", "to_target.csv", "table.md", "table.html",
                 "deltas.md", "deltas.html", *(f"plots/{p}.png" for p in report.PLOTS)):
        assert (out / name).stat().st_size > 0, name
    table = (out / "table.md").read_text()
    assert "98.15 ± 0.13 (n=4)" in table               # our bp mean ± sd
    assert "98.05 ± 0.10 (n=3, run-logs)" in table     # the published bp row beside it
    deltas = (out / "deltas.md").read_text()
    mf = next(line for line in deltas.splitlines() if "| mf | mnist |" in line)
    assert "+0.20 pp [+0.20, +0.20]" in mf and "+0.09" in mf  # ours (constant difference) beside published
    assert "supports the sign (published value outside our interval)" in deltas
    ff = next(line for line in deltas.splitlines() if "| ff-adamw |" in line)
    assert "unpaired: no seed in common with bp" in ff
    cafo = next(line for line in deltas.splitlines() if "| cafo-rand-ce |" in line)
    assert "single seed (n = 1): no interval" in cafo
    dl = pd.read_csv(out / "deltas.csv")
    assert set(dl.metric) == {"test_accuracy", "train_time_s", "energy_j", "energy_dynamic_j", "peak_memory_mib"}


def test_not_resolved_delta_is_labelled_with_n(tmp_path):
    files = [fake_run(tmp_path, "digits", "m", "bp", s, a) for s, a in enumerate([97.0, 96.0, 98.0])]
    files += [fake_run(tmp_path, "digits", "m", "mf", s, a) for s, a in enumerate([97.5, 95.0, 98.5])]
    report.run_report(files, tmp_path / "out", {"resamples": 500})
    row = next(line for line in (tmp_path / "out" / "deltas.md").read_text().splitlines() if "| mf | digits |" in line)
    assert "not resolved at n = 3" in row


def test_cli_report_and_bad_statistics(tmp_path, capsys):
    files = [str(f) for f in fake_tree(tmp_path)]
    cli.main(["report", "--out-dir", str(tmp_path / "o"), "--statistics", '{"resamples": 200}', *files])
    assert (tmp_path / "o" / "deltas.md").exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["report", "--out-dir", str(tmp_path / "o"), "--statistics", '{"resamples": 5}', *files])
    assert e.value.code == 2 and "statistics.resamples = 5" in capsys.readouterr().err


def test_published_tables_are_package_data_with_checked_provenance():
    prov = (Path(published.__file__).parent / "PROVENANCE.md").read_text()
    for name in published.TABLES:
        data = published.path(name).read_bytes()
        assert hashlib.sha256(data).hexdigest() in prov, name
        assert len(published.load(name)) > 0
    pkg_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.csv" in pkg_data["bpfree.published"] and "*.md" in pkg_data["bpfree.published"]
    res = published.load("results")
    assert {"test_acc_mean", "energy_wh", "source"} <= set(res.columns)


# ---- snakemake --report on a finished tiny workflow ---------------------------------------------

def _report_outputs() -> list[str]:
    """Every path marked report(...) in the report rule."""
    text = (ROOT / "workflow" / "rules" / "report.smk").read_text()
    return re.findall(r'report\(\s*"([^"]+)"', text)


@pytest.mark.slow
def test_snakemake_html_report_embeds_every_figure(tmp_path):
    """A copy of the workflow whose runs are finished (a fake results tree, no training), then
    `snakemake` (only the report job runs) and `snakemake --report report.html`."""
    work = tmp_path / "wf"
    shutil.copytree(ROOT / "workflow", work / "workflow")
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "Snakefile", work / "Snakefile")
    (work / "data" / "MNIST" / "raw").mkdir(parents=True)  # data_root names a real folder (checked)
    cfg = {"datasets": ["mnist"], "data_root": str(work / "data"),
           "architectures": {"mlp-2x1000": {"type": "mlp", "widths": [1000, 1000]}},
           "comparisons": [{"architecture": "mlp-2x1000", "algorithms": ["bp", "mf"]}],
           "algorithms": {"bp": {"impl": "bp", "fixed": {"batch_size": 128, "lr": 1e-3, "weight_decay": 0.0}},
                          "mf": {"impl": "mf", "fixed": {"batch_size": 128, "lr": 1e-3}}},
           "protocol": {"seeds": [0, 1, 2, 3], "stopping": {"max_epochs": 5, "patience": 2},
                        "search": {"n_trials": 0}, "statistics": {"resamples": 300}}}
    (work / "config").mkdir()
    (work / "config" / "config.yaml").write_text(json.dumps(cfg))
    for s in range(4):
        fake_run(work, "mnist", "mlp-2x1000", "bp", s, 98.0 + 0.1 * s)
        fake_run(work, "mnist", "mlp-2x1000", "mf", s, 98.1 + 0.15 * s, layers=2)
    # upstream outputs of the finished runs, newer than every source file
    for f in ("resources/data/mnist.pt", *(f"results/search/mnist/mlp-2x1000/{a}/{n}" for a in ("bp", "mf")
                                           for n in ("best.json", "trials.csv"))):
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_text("{}")
    old = 1_600_000_000
    for p in (work / "src").rglob("*"):
        os.utime(p, (old, old))
    for i, stage in enumerate(("resources", "results/search", "results/runs")):  # upstream first
        for p in (work / stage).rglob("*"):
            os.utime(p, (old + 1000 * (i + 1),) * 2)
    env = {**os.environ, "PYTHONPATH": str(work / "src")}
    run = subprocess.run([str(SNAKEMAKE), "--cores", "1", "--rerun-triggers", "mtime"], cwd=work,
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "localrule report:" in run.stderr and "rule train:" not in run.stderr, run.stderr[-3000:]
    run = subprocess.run([str(SNAKEMAKE), "--report", "report.html"], cwd=work, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    html = (work / "report.html").read_text()
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html, re.S).group(1))
    expected = _report_outputs()
    assert len(expected) >= 9 and sum(p.endswith(".png") for p in expected) == 5
    assert set(expected) == set(results), "every report(...) output, and only those, is in the HTML"
    for path, entry in results.items():
        assert (work / path).exists(), path
        assert entry["caption"].strip(), f"{path} has no caption"
        uri = entry["data_uri"]
        assert uri.startswith("data:"), f"{path} is not embedded"
        payload = base64.b64decode(uri.split("base64,", 1)[1])
        assert payload == (work / path).read_bytes(), f"{path}: embedded bytes differ from the file"
        if path.endswith(".png"):
            assert entry["mime_type"] == "image/png" and payload.startswith(b"\x89PNG")
    assert (work / "results" / "table.md").exists() and (work / "results" / "deltas.md").exists()
