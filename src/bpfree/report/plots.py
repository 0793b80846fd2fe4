"""The report's figures: each `plot_*` function takes what it needs and a path, and draws through
`_plt()` and `_save()` (atomic, via io); a plot with nothing to show draws why (`_empty`)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bpfree import io, stats
from bpfree.report.load import _methods
from bpfree.stats import CELL


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    io.save_figure(fig, path, dpi=110)
    _plt().close(fig)


def _empty(path: str | Path, text: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (energy, accuracy) points no other point beats on both (less energy, more
    accuracy), in order of increasing energy."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_accuracy_energy(runs: pd.DataFrame, path: str | Path) -> None:
    plt = _plt()
    datasets = sorted(runs.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        sub = runs[runs.dataset == d]
        pts, labels = [], []
        for k, ((arch, alg), g) in enumerate(sub.groupby(["architecture", "algorithm"])):
            ax.scatter(g.energy_j, g.test_accuracy, color=f"C{k}", alpha=0.35, s=14)
            e, acc = g.energy_j.mean(), g.test_accuracy.mean()
            ax.errorbar(e, acc, xerr=g.energy_j.std(ddof=1) if len(g) > 1 else None,
                        yerr=g.test_accuracy.std(ddof=1) if len(g) > 1 else None, fmt="o", color=f"C{k}",
                        capsize=3, label=f"{alg} ({arch}), n={len(g)}")
            pts.append((e, acc))
            labels.append(alg)
        front = pareto_front(pts)
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="k", lw=1, ls="--", label="Pareto front (cell means)")
        ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="k")
        methods = _methods(sub)
        ax.set(title=d, xlabel=f"training energy (J, {methods})", ylabel="test accuracy (%)")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_accuracy_cost(runs: pd.DataFrame, path: str | Path) -> None:
    """Test accuracy against training cost per dataset: CPU seconds of the training process (wall
    seconds where a run recorded none), log scale; one colour per algorithm and one marker per
    network, the same on every panel; cell means with their sd, and the Pareto front of the means."""
    plt = _plt()
    cost = "cpu_time_s" if "cpu_time_s" in runs and runs.cpu_time_s.notna().all() else "train_time_s"
    label = "training CPU time (s, process user + system)" if cost == "cpu_time_s" else "training time (s, wall)"
    datasets = sorted(runs.dataset.unique())
    algos = sorted(runs.algorithm.unique(), key=lambda a: (a != stats.REFERENCE, a))
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("tab20").colors[1::2]]  # 20 distinct, strong first
    colour = {a: palette[i % len(palette)] for i, a in enumerate(algos)}
    marker = {a: "osD^v<>p*h"[i % 10] for i, a in enumerate(sorted(runs.architecture.unique()))}
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets) + 2.8, 4.4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        pts = []
        for (arch, alg), g in runs[runs.dataset == d].groupby(["architecture", "algorithm"]):
            x, y = g[cost].mean(), g.test_accuracy.mean()
            ax.errorbar(x, y, yerr=g.test_accuracy.std(ddof=1) if len(g) > 1 else None, fmt=marker[arch],
                        color=colour[alg], ms=7, capsize=3, label=f"{alg} ({arch})")
            pts.append((x, y))
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="k", lw=1, ls="--",
                label="Pareto front (cell means)")
        ax.set(title=d, xlabel=label, ylabel="test accuracy (%)", xscale="log")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.8 / (5.2 * len(datasets) + 2.8), 1))
    io.save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_learning_curves(runs: pd.DataFrame, curves: dict[tuple, pd.DataFrame], path: str | Path) -> None:
    """Validation accuracy against epoch (left) and against cumulative joules (right)."""
    plt = _plt()
    groups = sorted({(r.dataset, r.architecture) for r in runs.itertuples()})
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.6 * len(groups)), squeeze=False)
    methods = _methods(runs)
    for row, (d, a) in zip(axes, groups):
        algs = sorted(runs[(runs.dataset == d) & (runs.architecture == a)].algorithm.unique())
        for k, alg in enumerate(algs):
            keys = sorted(key for key in curves if key[:3] == (d, a, alg))
            for j, key in enumerate(keys):
                c = curves[key]
                lab = f"{alg} ({len(keys)} seeds)" if j == 0 else None
                row[0].plot(c.epoch, c.val_acc, color=f"C{k}", alpha=0.6, lw=1, label=lab)
                joules = c.cum_energy_j if "cum_energy_j" in c else c.energy_j.cumsum() if "energy_j" in c else None
                if joules is not None:
                    row[1].plot(joules, c.val_acc, color=f"C{k}", alpha=0.6, lw=1, label=lab)
        row[0].set(title=f"{d} / {a}", xlabel="epoch (all stages)", ylabel="validation accuracy (%)")
        row[1].set(title=f"{d} / {a}", xlabel=f"cumulative training energy (J, {methods})",
                   ylabel="validation accuracy (%)")
        for ax in row:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    _save(fig, path)


def plot_layer_accuracy(layers: pd.DataFrame, runs: pd.DataFrame, path: str | Path) -> None:
    """Test accuracy of each layer's or block's own predictor (mean ± sd over seeds)."""
    if layers.empty:
        _empty(path, "No algorithm in these runs reports per-layer or per-block accuracy\n"
                     "(MF, FF and CaFo do; bp has a single output).")
        return
    plt = _plt()
    cells = sorted({tuple(k) for k in layers[CELL].itertuples(index=False)})
    ncol = min(4, len(cells))
    nrow = math.ceil(len(cells) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3.8 * nrow), squeeze=False)
    for ax in axes.flat[len(cells):]:
        ax.axis("off")
    for ax, (d, a, alg) in zip(axes.flat, cells):
        g = layers[(layers.dataset == d) & (layers.architecture == a) & (layers.algorithm == alg)]
        order = list(dict.fromkeys(g.layer))
        agg = g.groupby("layer").test_accuracy.agg(["mean", "std", "count"]).reindex(order)
        ax.bar(range(len(order)), agg["mean"], yerr=agg["std"].fillna(0), capsize=3, color="C2")
        ax.set_xticks(range(len(order)), order, rotation=30, fontsize=8)
        final = runs[(runs.dataset == d) & (runs.architecture == a) & (runs.algorithm == alg)].test_accuracy.mean()
        ax.axhline(final, color="k", ls="--", lw=1, label=f"final prediction {final:.2f} %")
        lo = max(0.0, min(float(np.nanmin(agg["mean"])), final) - 5)
        ax.set(title=f"{alg}: {d} / {a} (n={int(agg['count'].max())})", ylabel="test accuracy (%)",
               ylim=(lo, 100))
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_to_target(tt: pd.DataFrame, fraction: float, path: str | Path) -> None:
    """Seconds and joules until the validation accuracy first reaches the target (mean ± sd over
    the seeds that reach it; the count above each bar)."""
    plt = _plt()
    groups = sorted({(r.dataset, r.architecture) for r in tt.itertuples()})
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3.6 * len(groups)), squeeze=False)
    for row, (d, a) in zip(axes, groups):
        g = tt[(tt.dataset == d) & (tt.architecture == a)]
        target = g.target_acc.iloc[0]
        algs = sorted(g.algorithm.unique())
        for ax, col, unit in ((row[0], "seconds", "s"), (row[1], "energy_j", "J")):
            if not np.isfinite(target):
                ax.axis("off")
                ax.text(0.5, 0.5, f"{d} / {a}: no bp cell, so no target", ha="center", va="center")
                continue
            for k, alg in enumerate(algs):
                ga = g[g.algorithm == alg]
                reached = ga[ga.reached.astype(bool)]
                mean = reached[col].mean() if len(reached) else 0.0
                sd = reached[col].std(ddof=1) if len(reached) > 1 else 0.0
                ax.bar(k, mean, yerr=sd, capsize=3, color=f"C{k}")
                ax.annotate(f"{len(reached)}/{len(ga)} reached", (k, mean), ha="center", va="bottom",
                            fontsize=8, xytext=(0, 3), textcoords="offset points")
            ax.set_xticks(range(len(algs)), algs)
            ax.set(title=f"{d} / {a}: target {target:.2f} % ({fraction:g} x bp)",
                   ylabel=f"to target ({unit})")
    _save(fig, path)


def plot_energy_components(comp: pd.DataFrame, path: str | Path) -> None:
    """Mean energy per component of each cell, stacked, each component labelled with its method."""
    if comp.empty:
        _empty(path, "No run reports energy by component.")
        return
    plt = _plt()
    datasets = sorted(comp.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    keys = sorted({(r.component, r.method) for r in comp.itertuples()})
    colors = {k: f"C{i}" for i, k in enumerate(keys)}
    for ax, d in zip(axes[0], datasets):
        sub = comp[comp.dataset == d]
        cells = sorted({(r.architecture, r.algorithm) for r in sub.itertuples()})
        mean = sub.groupby(["architecture", "algorithm", "component", "method"]).energy_j.mean()
        bottom = np.zeros(len(cells))
        for key in keys:
            vals = np.array([mean.get((a, alg, *key), 0.0) for a, alg in cells])
            if not vals.any():
                continue
            ax.bar(range(len(cells)), vals, bottom=bottom, color=colors[key], label=f"{key[0]} ({key[1]})")
            bottom += vals
        ax.set_xticks(range(len(cells)), [f"{alg}\n{a}" for a, alg in cells], fontsize=8)
        ax.set(title=d, ylabel="training energy, mean over seeds (J)")
        ax.legend(fontsize=8, title="component (method)", title_fontsize=8)
    _save(fig, path)
