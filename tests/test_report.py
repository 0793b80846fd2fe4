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
from matplotlib.colors import to_rgb

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
         "locality": "end-to-end" if alg == "bp" else "layer-local",
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
                 "deltas.md", "deltas.html", *(o.path for o in report.PLOTS)):
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


def test_locality_is_shown_beside_each_algorithm(tmp_path):
    files = [fake_run(tmp_path, "digits", "tiny", a, s, 90.0 + s) for a in ("bp", "mf") for s in range(2)]
    report.run_report(files, tmp_path / "out", {"resamples": 200})
    table, deltas = ((tmp_path / "out" / f).read_text() for f in ("table.md", "deltas.md"))
    assert "| bp | end-to-end |" in table and "| mf | layer-local |" in table
    assert "| mf | layer-local |" in deltas
    assert set(pd.read_csv(tmp_path / "out" / "summary.csv").locality) == {"end-to-end", "layer-local"}


def test_the_authors_own_figures_stand_beside_the_matching_rows(tmp_path):
    files = [fake_run(tmp_path, "mnist", "mlp-2x1000", a, s, 98.0 + s) for a in ("bp", "local-predsim", "fa")
             for s in range(2)]
    report.run_report(files, tmp_path / "out", {"resamples": 200})
    table = (tmp_path / "out" / "table.md").read_text()
    row = next(line for line in table.splitlines() if "| local-predsim |" in line)
    assert "99.38 (MLP 3x1024, V)" in row
    assert "98.30 (LeNet (BioTorch), V)" in next(line for line in table.splitlines() if "| fa |" in line)
    assert "99.38" not in next(line for line in table.splitlines() if "| bp |" in line)


def test_runs_that_the_epoch_cap_ended_are_named(tmp_path):
    """A cell whose runs the cap stopped while still improving is measured by the rule, not the
    algorithm: the notes say so (runs without the key, from before it existed, say nothing)."""
    files = [fake_run(tmp_path, "digits", "tiny", a, s, 90.0 + s) for a in ("bp", "fa") for s in range(3)]
    for f in files[3:5]:  # two of fa's three runs hit the cap
        m = json.loads(f.read_text())
        f.write_text(json.dumps({**m, "capped_stages": 1}))
    report.run_report(files, tmp_path / "out", {"resamples": 200})
    deltas = (tmp_path / "out" / "deltas.md").read_text()
    assert ("digits/tiny/fa: the epoch cap (30) ended 2 of 3 runs before their patience (5 epochs) ran out"
            in deltas)
    assert "digits/tiny/bp: the epoch cap" not in deltas


def test_runs_whose_loss_diverged_are_named(tmp_path):
    """A final run kept after a divergence (engine.fit's "stop") is not silent: its cell says so."""
    files = [fake_run(tmp_path, "digits", "tiny", a, s, 90.0 + s) for a in ("bp", "pepita") for s in range(3)]
    for f in files[3:]:
        m = json.loads(f.read_text())
        f.write_text(json.dumps({**m, "diverged_stages": 1, "divergence": "training loss rose ... epoch 9"}))
    report.run_report(files, tmp_path / "out", {"resamples": 200})
    deltas = (tmp_path / "out" / "deltas.md").read_text()
    assert "digits/tiny/pepita: the training loss diverged in 3 of 3 runs" in deltas
    assert "digits/tiny/bp: the training loss diverged" not in deltas


def test_the_declared_margins_are_named_even_when_one_seed_gives_no_verdict(tmp_path):
    """Regression: with one seed per cell every margin was NaN and the notes said "margins none"."""
    files = [fake_run(tmp_path, "digits", "tiny", a, 0, 90.0) for a in ("bp", "mf")]
    report.run_report(files, tmp_path / "out", {"resamples": 200})
    deltas = (tmp_path / "out" / "deltas.md").read_text()
    assert "margins none" not in deltas and "test_accuracy ±0.5 pp" in deltas


def test_cli_lists_an_algorithms_declared_settings(capsys):
    cli.main(["settings", "dfa"])
    out = capsys.readouterr().out
    assert "locality feedback-alignment" in out and "feedback_init (str, one of uniform, unit-rows" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["settings", "nosuchalgo"])
    assert e.value.code == 2 and "shipped: bp" in capsys.readouterr().err


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


def test_verdicts_claims_board_energy_and_resumed_runs_in_the_report(tmp_path):
    files = fake_tree(tmp_path)
    for f in files:  # a GPU's board energy on the mnist bp and mf runs; one mf run resumed after a kill
        m = json.loads(f.read_text())
        if m["algorithm"] in ("bp", "mf"):
            m["energy_board_j"] = m["energy_j"] * (0.5 if m["algorithm"] == "mf" else 1.0)
            m["energy_board_method"] = "nvml-power at 5 Hz, trapezoid, GPU board only, no idle subtraction"
            resumed = (m["algorithm"], m["seed"]) == ("mf", 2)
            m["resumed"], m["segments"] = resumed, 1 + resumed
        f.write_text(json.dumps(m))
    out = tmp_path / "out"
    report.run_report(files, out, {"resamples": 500, "margins": {"test_accuracy": 0.1}})
    deltas, table = (out / "deltas.md").read_text(), (out / "table.md").read_text()
    verdicts = deltas.split("## Verdicts at the declared margins")[1].split("## Published claims")[0]
    acc = next(line for line in verdicts.splitlines() if "| mf | test_accuracy |" in line)
    assert "±0.1 pp" in acc and "better by more than 0.1 pp" in acc and "TOST" in acc  # constant +0.20
    claims = deltas.split("## Published claims")[1].split("## Notes")[0]
    mnist_acc = next(line for line in claims.splitlines() if "| original (published table) | mnist |" in line
                     and "test_accuracy" in line)
    # the published +0.09 lies inside ±0.1; ours, a constant +0.20, beyond it
    assert "| equivalent within ±0.1 pp | better by more than 0.1 pp | disagrees |" in mnist_acc
    energy = next(line for line in claims.splitlines() if "| original (published table) | mnist |" in line
                  and "energy" in line)
    assert "| energy_board_j |" in energy  # like with like: held against the board energy
    assert "| -13.34 |" in energy and "| better by more than 10 % | better by more than 10 % | agrees |" in energy
    assert "withdrawn by its authors" in claims  # MF-v2 beside the original mf claims
    ff = next(line for line in claims.splitlines() if "camera-ready" in line and "| ff-adamw |" in line)
    # FF's energy claim was measured on an A100; ours on this CPU is an estimate: listed, not judged
    assert "+310 to +530" in ff and "not comparable here: ours is estimate energy" in ff
    assert "1 of 4" in table and "0 of 4" in table  # resumed runs per cell
    assert "1 of 4 runs resumed" in deltas
    assert "unavailable: not recorded by these runs" in table  # ff and cafo have no board figure, not 0
    dl = pd.read_csv(out / "deltas.csv")
    assert {"margin", "verdict", "verdict_method", "seeds_needed", "seeds_needed_note"} <= set(dl.columns)


def test_margin_verdict_of_a_claim_by_hand():
    ours = {"metric": "test_accuracy", "unit": "pp", "margin": 0.5, "verdict_kind": "equivalent",
            "verdict": "equivalent within ±0.5 pp", "status": "resolved", "seeds_needed_note": ""}
    assert report.margin_verdict(ours, 0.09, 0.09)["agreement"] == "agrees"
    assert report.margin_verdict(ours, 0.51, 0.51)["agreement"] == "disagrees"
    assert report.margin_verdict(ours, 0, 0, "equivalent")["agreement"] == "agrees"
    assert report.margin_verdict(ours, -0.2, 0.7)["agreement"] == "the claim is not a statement at this margin"
    unresolved = {**ours, "verdict_kind": "not resolved", "verdict": "not resolved",
                  "seeds_needed_note": "14 paired seeds to show equivalent within the margin (estimate ...)"}
    assert report.margin_verdict(unresolved, 0.09, 0.09)["agreement"].startswith("not resolved: 14 paired seeds")
    assert report.margin_verdict(None, 1, 1)["agreement"] == "no verdict of ours: no run of ours"


def test_cli_report_from_a_recorded_summary(tmp_path, capsys):
    cli.main(["report", "--out-dir", str(tmp_path), "--summary", str(ROOT / "docs/repro-mlp/summary.csv"),
              "--statistics", '{"resamples": 500}'])
    deltas = (tmp_path / "deltas.md").read_text()
    assert "equivalent within ±0.5 pp" in deltas and "better by more than 10 %" in deltas
    assert not (tmp_path / "plots").exists()
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    for args, message in ((["--summary", "x.csv", "m.json"], "not both"),
                          (["--summary", str(tmp_path / "bad.csv")], "lacks the columns")):
        with pytest.raises(SystemExit) as e:  # a known failure: one line, exit status 2
            cli.main(["report", "--out-dir", str(tmp_path), *args])
        assert e.value.code == 2 and message in capsys.readouterr().err


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
    claims = published.load("claims")
    assert set(claims.source) == {"camera-ready", "mf-v2"} and set(claims.stated) <= {"difference", "equivalent",
                                                                                        "withdrawn"}
    diff = claims[claims.stated == "difference"]
    assert (diff.low <= diff.high).all() and set(claims.metric) <= set(report.stats.DELTA_METRICS)


def test_the_main_table_is_narrow_and_the_absolute_table_comes_in_two_parts(tmp_path):
    """main.html (the report's opening page includes it): one table per dataset and network, six
    columns, ASCII only (a fragment declares no encoding). table.html: ours beside the published
    values first, the rest per cell after, each under 15 columns, headers that wrap."""
    files = fake_tree(tmp_path)
    files += [fake_run(tmp_path, "mnist", "cnn", a, s, 97.0 + s) for a in ("bp", "fa") for s in range(2)]
    report.run_report(files, tmp_path / "out", {"resamples": 200})
    main = (tmp_path / "out" / "main.html").read_text()
    assert main.isascii() and "<html" not in main and main.startswith("<style>.bpfree-main")
    assert re.findall(r"<h4>(.*?)</h4>", main) == ["mnist / cnn", "mnist / mlp-2x1000"]
    heads = re.findall(r"<thead>(.*?)</thead>", main, re.S)
    assert len(heads) == 2 and all(h.count("<th>") == 6 for h in heads)
    mf = re.search(r"<td>mf</td>(.*?)</tr>", main, re.S).group(1)
    assert "98.35 &#177; 0.13 (n=4)" in mf and "+0.20 pp [+0.20, +0.20]" in mf
    assert "<td>the reference</td>" in main
    page = (tmp_path / "out" / "table.html").read_text()
    parts = re.findall(r"<h3>(.*?)</h3>\s*<table.*?<thead>(.*?)</thead>", page, re.S)
    assert [h for h, _ in parts][:2] == ["Ours beside the published values", "More per cell"]
    assert all(head.count("<th>") < 15 for _, head in parts[:2])
    assert "<th>published accuracy (%)</th>" in parts[0][1] and "<th>locality</th>" in parts[1][1]
    assert "anywhere" not in page, "a number broken inside is not read"


# ---- figures: one look per algorithm, clipped intervals, zoomed curves --------------------------

ALGOS = ["bp", *(f"alg{i:02d}" for i in range(1, 20))]  # 20 algorithms: more than any palette of 10


@pytest.fixture
def figures(monkeypatch, tmp_path):
    """`figures(files)`: every figure of the registry (report.PLOTS) drawn from these runs, by file
    name, kept open until the test ends (one with nothing to show is written under tmp_path)."""
    import matplotlib.pyplot as plt

    from bpfree.report import plots

    def draw(files: list[Path]) -> dict:
        figs = {}
        monkeypatch.setattr(plots, "_save", lambda fig, path: figs.__setitem__(Path(path).stem, fig))
        raw = report.load_runs(files)
        results = report.Results(report.summarize(raw), raw, report.StatsConfig.from_dict({"resamples": 100}))
        for o in report.PLOTS:
            o.write(results, tmp_path / "out" / o.path)
        return figs
    yield draw
    plt.close("all")


def _legend_looks(fig) -> dict[str, tuple]:
    """The figure legend's entries: label -> (colour, marker)."""
    (legend,) = fig.legends
    return {t.get_text(): (to_rgb(h.get_color()), h.get_marker()) for h, t in zip(legend.legend_handles,
                                                                                   legend.get_texts())}


def _scaled(metrics: Path, factor: float) -> None:
    """Multiply a fake run's time and energy (metrics.json and epochs.csv) by `factor`."""
    m = json.loads(metrics.read_text())
    for k in ("energy_j", "energy_dynamic_j", "train_time_s"):
        m[k] *= factor
    for c in m["energy_components"].values():
        c["j"] *= factor
    metrics.write_text(json.dumps(m))
    ep = pd.read_csv(metrics.parent / "epochs.csv")
    ep[["seconds", "energy_j"]] *= factor
    ep.to_csv(metrics.parent / "epochs.csv", index=False)


def test_each_algorithm_has_its_own_colour_and_marker_the_same_in_every_figure(tmp_path, figures):
    from bpfree.report.style import styles

    looks = {a: (to_rgb(s.colour), s.marker) for a, s in styles(reversed(ALGOS)).items()}
    assert list(looks)[0] == "bp" and len(set(looks.values())) == len(ALGOS) == 20
    assert len({c for c, _ in looks.values()}) == 20, "20 algorithms, 20 colours"
    files = [fake_run(tmp_path, "digits", arch, alg, s, 90.0 + 0.2 * k, layers=2 * (alg == "alg07"))
             for k, alg in enumerate(ALGOS) for arch in ("mlp", "cnn") for s in range(2)]
    figs = figures(files)
    for name in ("accuracy_vs_energy", "accuracy_vs_cost", "learning_curves"):
        shown = _legend_looks(figs[name])
        assert {a: shown[a] for a in looks} == looks, name
        drawn = {(to_rgb(line.get_color()), line.get_marker()) for ax in figs[name].axes for line in ax.lines
                 if line.get_marker() not in ("None", "", "|", "_") and line.get_color() != "k"}  # caps aside
        assert drawn <= set(looks.values()), f"{name} draws a look that is no algorithm's"
    for ax in figs["to_target"].axes:  # one bar per algorithm, named on the y axis, in its colour
        names = [t.get_text() for t in ax.get_yticklabels()]
        assert [to_rgb(b.get_facecolor()) for b in ax.patches] == [looks[a][0] for a in names]
    layer = figs["layer_accuracy"].axes[0]
    assert to_rgb(layer.patches[0].get_facecolor()) == looks[layer.get_title().split(":")[0]][0]


def test_no_time_or_energy_interval_reaches_below_zero(tmp_path, figures):
    """Two seeds 50x apart: mean - sd is below 0; every whisker of a time or energy stops at 0."""
    from matplotlib.collections import LineCollection

    from bpfree.report.style import clipped_sd

    assert clipped_sd([1.0, 50.0]) == (25.5, [25.5, pytest.approx(34.648, abs=1e-3)])
    assert clipped_sd([99.0, 100.0, 100.0], high=100.0)[1][1] == pytest.approx(1 / 3)
    files = [fake_run(tmp_path, "digits", "tiny", a, s, 90.0 + s) for a in ("bp", "mf", "fa") for s in range(2)]
    for f in files[::2]:
        _scaled(f, 50.0)
    figs = figures(files)
    for name in ("accuracy_vs_energy", "to_target", "energy_components"):
        axes = [ax for ax in figs[name].axes if ax.collections]
        lows = [seg.min() for ax in axes for c in ax.collections if isinstance(c, LineCollection)
                for seg in c.get_segments()]  # either axis: bars may stand or lie
        assert lows and min(lows) >= 0.0, f"{name}: a whisker reaches {min(lows):g}"


def test_learning_curves_are_zoomed_and_mark_where_a_stage_begins(tmp_path, figures):
    files = [fake_run(tmp_path, "digits", "tiny", a, s, 95.0 + s) for a in ("bp", "mf") for s in range(2)]
    files += [fake_run(tmp_path, "digits", "tiny", "pepita", s, 11.0) for s in range(2)]  # diverged
    for f in files[2:4]:  # mf trains layer by layer: 3 epochs each
        ep = pd.read_csv(f.parent / "epochs.csv")
        ep["stage"] = ["layer1"] * 3 + ["layer2"] * 3
        ep.to_csv(f.parent / "epochs.csv", index=False)
    figs = figures(files)
    by_epoch, by_joules = figs["learning_curves"].axes[:2]
    low, high = by_epoch.get_ylim()
    assert 90.0 < low < 95.0 and high <= 100.0, "zoomed onto the late epochs, not 0-100"
    looks = _legend_looks(figs["learning_curves"])
    bp, mf = looks["bp"][0], looks["mf"][0]
    assert min(min(line.get_ydata()) for line in by_epoch.lines if to_rgb(line.get_color()) == bp) < low, \
        "bp's first epochs fall below the axis"
    assert [t.get_text() for t in by_epoch.texts] == ["below the axis: pepita"]
    stage_lines = [line for line in by_epoch.lines if line.get_linestyle() == ":"]
    assert [(line.get_xdata()[0], to_rgb(line.get_color())) for line in stage_lines] == [(3.5, mf)] * 2  # a seed each
    assert len([line for line in by_joules.lines if line.get_linestyle() == ":"]) == 2


# ---- snakemake --report on a finished tiny workflow ---------------------------------------------

def _report_outputs() -> list[str]:
    """Every path the report rule marks report(...): the registry's entries with a caption."""
    return [f"results/{o.path}" for o in report.OUTPUTS if o.caption]


def _finished_workflow(tmp_path: Path) -> Path:
    """A copy of the workflow whose runs are finished (a fake results tree, no training)."""
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
    return work


def _html_report(work: Path) -> dict:
    """`snakemake` (only the report job runs) then `snakemake --report report.html` in `work`: the
    HTML's embedded results, by path."""
    env = {**os.environ, "PYTHONPATH": str(work / "src")}
    run = subprocess.run([str(SNAKEMAKE), "--cores", "1", "--rerun-triggers", "mtime"], cwd=work,
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "localrule report:" in run.stderr and "rule train:" not in run.stderr, run.stderr[-3000:]
    run = subprocess.run([str(SNAKEMAKE), "--report", "report.html"], cwd=work, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    html = (work / "report.html").read_text()
    return json.loads(re.search(r"var results = (\{.*?\});\n", html, re.S).group(1))


def _opening_page(work: Path) -> str:
    """The report's first view: the workflow's description (workflow/report/workflow.rst), rendered."""
    html = (work / "report.html").read_text()
    return json.loads(re.search(r"workflow_desc = (\".*?\");\n", html, re.S).group(1))


@pytest.mark.slow
def test_snakemake_html_report_embeds_every_figure(tmp_path):
    """A copy of the workflow whose runs are finished (a fake results tree, no training), then
    `snakemake` (only the report job runs) and `snakemake --report report.html`."""
    work = _finished_workflow(tmp_path)
    results = _html_report(work)
    expected = _report_outputs()
    assert len(expected) >= 9 and sum(p.endswith(".png") for p in expected) == len(report.PLOTS)
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
    opening = _opening_page(work)
    assert (work / "results" / "main.html").read_text().strip() in opening, "the report opens on the main table"
    assert "showResultInfo('results/table.html')" in opening


def test_every_output_of_the_registry_has_its_caption_and_a_unique_key():
    keys = [o.key for o in report.OUTPUTS]
    assert len(set(keys)) == len(keys) and len({o.path for o in report.OUTPUTS}) == len(keys)
    for o in report.OUTPUTS:
        assert o.caption is None or (ROOT / "workflow" / "report" / o.caption).read_text().strip(), o.path
    assert {o.path for o in report.OUTPUTS if o.from_summary} == {"deltas.csv", "deltas.md", "deltas.html"}


def _guide_blocks() -> dict[str, str]:
    """docs/adding-a-plot-or-table.md's worked example: the function, the record, the caption."""
    guide = (ROOT / "docs" / "adding-a-plot-or-table.md").read_text()
    blocks = re.findall(r"```(\w+)\n(.*?)```", guide, re.S)
    return {"function": next(b for lang, b in blocks if lang == "python" and b.startswith("def ")),
            "entry": next(b for lang, b in blocks if lang == "python" and b.startswith("plot(")),
            "caption": next(b for lang, b in blocks if lang == "rst")}


@pytest.mark.slow
def test_a_plot_added_by_one_registry_entry_appears_in_the_html_report(tmp_path):
    """The guide's plot, pasted into a copy of the package (its function and its one record in
    PLOTS) with its caption: the workflow writes it and `snakemake --report` embeds it."""
    mine = {f: f.read_bytes() for f in (ROOT / "src" / "bpfree" / "report").glob("*.py")}
    work = _finished_workflow(tmp_path)
    guide = _guide_blocks()
    package = work / "src" / "bpfree" / "report"
    anchor = "PLOTS = (\n"
    registry, plots = package / "outputs.py", package / "plots.py"
    registry.write_text(registry.read_text().replace(anchor, anchor + "    " + guide["entry"].strip() + "\n"))
    plots.write_text(plots.read_text() + "\n\n" + guide["function"])
    (work / "workflow" / "report" / "seed_accuracy.rst").write_text(guide["caption"])
    results = _html_report(work)
    new = "results/plots/seed_accuracy.png"
    assert set(results) == {*_report_outputs(), new}
    assert results[new]["mime_type"] == "image/png" and "one line per seed" in results[new]["caption"]
    assert base64.b64decode(results[new]["data_uri"].split("base64,", 1)[1]) == (work / new).read_bytes()
    # the copy only (not "no seed_accuracy in the package": that failed for whoever pasted the example in)
    assert {f: f.read_bytes() for f in (ROOT / "src" / "bpfree" / "report").glob("*.py")} == mine


# ---- the compared metrics: one list ------------------------------------------------------------

def test_every_compared_metric_has_a_margin_a_unit_and_its_published_column():
    """bpfree.compared.COMPARED is the one list: the schema's margins are its metrics', the deltas
    and verdicts iterate it (stats), and a published delta it names is a column of the study's table."""
    from bpfree import stats
    from bpfree.compared import BY_NAME, COMPARED

    assert {m.margin_key for m in COMPARED} == set(stats.MARGINS)
    assert list(stats.DELTA_METRICS) == [m.name for m in COMPARED]
    assert stats.HIGHER_IS_BETTER == {"test_accuracy"}
    pub = published.load("deltas")
    for m in COMPARED:
        assert m.published is None or m.published in pub.columns, m.name
        assert m.claimed_by is None or m.claimed_by in BY_NAME, m.name
        assert m.estimated_by is None or m.estimated_by in report.COLUMNS, m.name
    labels = [m.label for m in COMPARED]
    assert len(set(labels)) == len(labels)


def test_a_compared_metric_spells_its_unit_once():
    from bpfree.compared import Metric, delta_format, symbol

    assert (symbol("pp"), symbol("pct"), delta_format("pp"), delta_format("pct")) == ("pp", "%", "+.2f", "+.1f")
    assert report.fmt_delta({"unit": "pct", "estimate": -12.34, "ci_low": -20.0, "ci_high": -5.0,
                             "status": "resolved"}) == "-12.3 % [-20.0, -5.0]"
    with pytest.raises(ValueError, match="unit 'J'"):
        Metric("energy_kj", "J", "delta_energy_kj")


def test_a_family_pattern_names_the_family_itself():
    """The camera-ready's `ff-*` claims hold for the default `ff` too (they were silently skipped)."""
    from bpfree.report.tables import _later_claims

    claims = published.load("claims")
    assert {c.variant for c in _later_claims(claims, "mnist", "mlp-3x1000", "ff")} == {"ff-*"}
    assert {c.variant for c in _later_claims(claims, "mnist", "mlp-3x1000", "ff-adamw")} == {"ff-*"}
    assert not _later_claims(claims, "mnist", "mlp-3x1000", "ffx")


def test_columns_empty_in_a_whole_report_are_left_out_and_named(tmp_path):
    """On digits no paper reports a time, energy or memory: those published columns are dashes in
    every row, so table.md and table.html leave them out and the notes name them."""
    files = [fake_run(tmp_path, "digits", "tiny", a, s, 90.0 + s) for a in ("bp", "mf") for s in range(2)]
    report.run_report(files, tmp_path / "out", {"resamples": 200})
    md, page = (tmp_path / "out" / "table.md").read_text(), (tmp_path / "out" / "table.html").read_text()
    header = md.splitlines()[2]
    assert "published time (s)" not in header and "test accuracy (%)" in header and "| dataset |" in header
    assert "left out: " in md and "published time (s)" in md.split("left out: ")[1]
    assert "<th>published time (s)</th>" not in page and "left out: " in page


def test_a_compared_metric_added_as_one_row_reaches_the_deltas_and_the_tables(tmp_path):
    """docs/adding-a-metric.md: one Metric row in bpfree.compared.COMPARED is all a compared metric
    needs. Here a row for `epochs` (a pct delta, lower is better, margin 20 %) is added before the
    statistics and the report are imported (as an edit of compared.py would), in a fresh process."""
    files = [fake_run(tmp_path, "digits", "tiny", a, s, 90.0 + s, epochs=6 if a == "bp" else 9)
             for a in ("bp", "mf") for s in range(3)]
    code = f"""
import sys
from bpfree import compared
compared.COMPARED += (compared.Metric("epochs", "pct", "delta_epochs_pct", default_margin=20.0),)
compared.BY_NAME["epochs"] = compared.COMPARED[-1]
from bpfree import report
report.run_report({[str(f) for f in files]!r}, {str(tmp_path / "out")!r}, {{"resamples": 200}})
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    dl = pd.read_csv(tmp_path / "out" / "deltas.csv")
    row = dl[(dl.algorithm == "mf") & (dl.metric == "epochs")].iloc[0]
    assert row.estimate == pytest.approx(50.0) and row.margin == 20.0  # 9 epochs against 6: +50 %
    assert "worse" in row.verdict
    deltas_md = (tmp_path / "out" / "deltas.md").read_text()
    assert "delta_epochs_pct" in deltas_md and "+50.0 %" in deltas_md and "epochs ±20 %" in deltas_md


def _planned(work: Path) -> dict[str, int]:
    """The jobs `snakemake -n` would run in `work`: rule -> count ({} when nothing is to be done)."""
    out = subprocess.run([str(SNAKEMAKE), "-n", "--cores", "1"], cwd=work, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(work / "src")})
    assert out.returncode == 0, out.stderr[-3000:]
    if "Nothing to be done" in out.stdout + out.stderr:
        return {}
    table = (out.stdout + out.stderr).split("Job stats:", 1)[1].split("total", 1)[0]
    return {r: int(n) for r, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def _add_algorithm(work: Path) -> None:
    """docs/adding-an-algorithm.md: a new file beside the shipped ones, an entry, a comparison."""
    algos = work / "src" / "bpfree" / "algorithms"
    shutil.copy(algos / "elm.py", algos / "elm2.py")
    cfg = json.loads((work / "config" / "config.yaml").read_text())
    cfg["algorithms"]["elm2"] = {"impl": "elm2", "fixed": {"ridge": 1e-3}}
    cfg["comparisons"][0]["algorithms"].append("elm2")
    (work / "config" / "config.yaml").write_text(json.dumps(cfg))


def _add_plot(work: Path) -> None:
    """docs/adding-a-plot-or-table.md's worked example."""
    guide, package = _guide_blocks(), work / "src" / "bpfree" / "report"
    registry = package / "outputs.py"
    anchor = "PLOTS = (\n"
    registry.write_text(registry.read_text().replace(anchor, anchor + "    " + guide["entry"].strip() + "\n"))
    (package / "plots.py").write_text((package / "plots.py").read_text() + "\n\n" + guide["function"])
    (work / "workflow" / "report" / "seed_accuracy.rst").write_text(guide["caption"])


def _add_compared_metric(work: Path) -> None:
    """docs/adding-a-metric.md: one row of bpfree.compared.COMPARED."""
    f = work / "src" / "bpfree" / "compared.py"
    row = '    Metric("epochs", "pct", "delta_epochs_pct"),\n'
    f.write_text(f.read_text().replace("COMPARED = (\n", "COMPARED = (\n" + row))


def _add_locality(work: Path) -> None:
    f = work / "src" / "bpfree" / "localities.py"
    text = f.read_text()
    assert "LOCALITIES = {" in text
    f.write_text(text.replace("LOCALITIES = {", 'LOCALITIES = {\n    "my-label": "a new locality label",', 1))


@pytest.mark.slow
@pytest.mark.parametrize("edit, planned", [
    (None, {}),
    (_add_algorithm, {"search": 1, "train": 4, "report": 1}),
    (_add_plot, {"report": 1}),
    (_add_compared_metric, {"report": 1}),
    (_add_locality, {}),  # a run records its locality in metrics.json: nothing reads the list but tests
], ids=["nothing", "algorithm", "plot", "compared-metric", "locality-label"])
def test_each_guides_edit_reruns_only_what_it_changes(tmp_path, edit, planned):
    """A registry entry applied to a finished results tree: `snakemake -n` lists its own jobs and
    the report, never the finished final runs of the other algorithms (issue 27: one new dataset
    entry rescheduled all 83 jobs). The dataset guide has its own: tests/test_registries.py."""
    work = _finished_workflow(tmp_path)
    # the tree's report too: written by the workflow itself, so that its Snakemake record is there
    subprocess.run([str(SNAKEMAKE), "--cores", "1", "results/summary.csv"], cwd=work, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(work / "src")})
    if edit is not None:
        edit(work)
    assert _planned(work) == {**planned, **({"all": 1} if planned else {})}
