"""The report's figures: each `plot_*` function takes what it needs and a path, and draws through
`_plt()` and `_save()` (atomic, via io); a plot with nothing to show draws why (`_empty`). How they
look (an algorithm's colour and marker, a network's fill, the legend beside the axes) is
`bpfree.report.style`'s, the same in every figure."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bpfree.report.load import _methods
from bpfree.report.style import _empty, _plt, _save, clipped_sd, fills, legend, log_ticks, styles
from bpfree.stats import CELL


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


def _line(colour, ls="-", marker="", **kw):
    """A legend's handle: a line or a marker drawn nowhere."""
    from matplotlib.lines import Line2D
    return Line2D([], [], color=colour, ls=ls, marker=marker, **kw)


def _err(lengths: list[float]) -> np.ndarray:
    """One point's asymmetric error bar lengths [below, above] as matplotlib takes them."""
    return np.array([lengths]).T


def _accuracy_against(runs: pd.DataFrame, x: str, xlabel: str, path: str | Path, log: bool = False) -> None:
    """Test accuracy against a cost per dataset: small marks the single runs, large ones the cell
    means with ± 1 sd (the cost's only on a linear axis, both clipped where the quantity ends), the
    dashed staircase the Pareto front of the means. Colour and marker: the algorithm; fill: the
    network."""
    plt = _plt()
    style, fill = styles(runs.algorithm), fills(runs.architecture)
    datasets = sorted(runs.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.2), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        pts = []
        for (arch, alg), g in runs[runs.dataset == d].groupby(["architecture", "algorithm"]):
            look = {"color": style[alg].colour, "marker": style[alg].marker, "fillstyle": fill[arch], "ls": "none"}
            ax.plot(g[x], g.test_accuracy, ms=3.5, alpha=0.4, **look)
            (cx, xerr), (cy, yerr) = clipped_sd(g[x]), clipped_sd(g.test_accuracy, high=100.0)
            ax.errorbar(cx, cy, xerr=None if log else _err(xerr), yerr=_err(yerr), ms=7, capsize=3, **look)
            pts.append((cx, cy))
        front = [pts[i] for i in pareto_front(pts)]
        ax.step(*zip(*front), where="post", color="k", lw=1, ls="--")
        ax.plot(*zip(*front), ls="none", marker="o", ms=14, color="k", mfc="none", mew=0.8)
        ax.set(title=d, xlabel=xlabel, ylabel="test accuracy (%)", xscale="log" if log else "linear")
        if log:
            log_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
    legend(fig, style, fill, [(_line("k", "--"), "Pareto front (cell means)"),
                              (_line("0.35", "none", "o", ms=3.5, alpha=0.4), "single runs")])
    _save(fig, path)


def plot_accuracy_energy(runs: pd.DataFrame, path: str | Path) -> None:
    """Test accuracy against training energy per dataset (the energy method in the axis label)."""
    _accuracy_against(runs, "energy_j", f"training energy (J, {_methods(runs)})", path)


def plot_accuracy_cost(runs: pd.DataFrame, path: str | Path) -> None:
    """Test accuracy against training cost per dataset: CPU seconds of the training process (wall
    seconds where a run recorded none), log scale."""
    cpu = "cpu_time_s" in runs and runs.cpu_time_s.notna().all()
    _accuracy_against(runs, "cpu_time_s" if cpu else "train_time_s",
                      "training CPU time (s, process user + system)" if cpu else "training time (s, wall)", path,
                      log=True)


def _curve(c: pd.DataFrame) -> pd.DataFrame:
    """A run's epoch, validation accuracy, cumulative joules and each epoch's joules (NaN where not
    metered), and stage."""
    joules = c.cum_energy_j if "cum_energy_j" in c else c.energy_j.cumsum() if "energy_j" in c else np.nan
    out = pd.DataFrame({"epoch": c.epoch, "val_acc": c.val_acc, "joules": joules,
                        "stage": c.stage.astype(str) if "stage" in c else ""})
    return out.assign(epoch_j=out.joules.diff().fillna(out.joules))


def _mean_curve(seeds: list[pd.DataFrame]) -> pd.DataFrame:
    """Per epoch, the mean accuracy of the seeds still training and the sum of their mean joules
    per epoch so far (so the energy axis only grows as seeds stop)."""
    mean = pd.concat(seeds).groupby("epoch")[["val_acc", "epoch_j"]].mean()
    return mean.assign(joules=mean.epoch_j.cumsum(), stage="").reset_index()


def _stage_starts(c: pd.DataFrame) -> pd.DataFrame:
    """Where each stage of a run after its first begins: between the epochs of the two stages, and
    at the joules spent by the end of the earlier one. Empty for a one-stage run."""
    new = c.stage.ne(c.stage.shift()) & c.stage.shift().notna()
    return pd.DataFrame({"epoch": c.epoch[new] - 0.5, "joules": c.joules.shift()[new]})


def _zoom(values: list[pd.Series], late: float = 0.8, pct: float = 5.0) -> tuple[float, float]:
    """y-limits where the curves differ: from the `pct`th percentile of the last `late` share of
    epochs of every curve that did not diverge (its median there at least half the best curve's) to
    the highest value, capped at 100, with a small margin. Early epochs and diverged runs fall below."""
    tails = [v.to_numpy(float)[int(len(v) * (1 - late)):] for v in values]
    tails = [t[np.isfinite(t)] for t in tails if np.isfinite(t).any()]
    if not tails:
        return 0.0, 100.0
    best = max(np.median(t) for t in tails)
    lo = float(np.percentile(np.concatenate([t for t in tails if np.median(t) >= best / 2]), pct))
    top = float(np.nanmax(np.concatenate([v.to_numpy(float) for v in values])))
    pad = max(0.05 * (top - lo), 0.1)
    return max(0.0, lo - pad), min(100.0, top + pad)


def plot_learning_curves(runs: pd.DataFrame, curves: dict[tuple, pd.DataFrame], path: str | Path) -> None:
    """Validation accuracy against the epoch (left) and the cumulative training energy (right), one
    row per dataset and network, in each algorithm's colour with its marker at the end: a one-stage
    algorithm's mean over its seeds (those still training at that epoch) bold, each seed faint; a
    multi-stage algorithm's seeds each (their stages end at different epochs, and each stage's
    predictor starts anew), with a dotted line where a stage begins (a layer's or block's training,
    CaFo's DFA phase). y zoomed to where the algorithms differ (`_zoom`)."""
    plt = _plt()
    style, methods = styles(runs.algorithm), _methods(runs)
    groups = sorted({(r.dataset, r.architecture) for r in runs.itertuples()})
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.4 * len(groups)), squeeze=False)
    for row, (d, a) in zip(axes, groups):
        mine = {k[2:]: _curve(c) for k, c in sorted(curves.items()) if k[:2] == (d, a)}
        for alg in (alg for alg in style if any(k[0] == alg for k in mine)):
            seeds = [c for k, c in mine.items() if k[0] == alg]
            staged = any(c.stage.nunique() > 1 for c in seeds)
            colour, marker = style[alg]
            for ax, x in ((row[0], "epoch"), (row[1], "joules")):
                for c in [] if staged else seeds:
                    ax.plot(c[x], c.val_acc, color=colour, alpha=0.25, lw=0.7)
                for c in seeds if staged else [_mean_curve(seeds)]:
                    for _, part in c.groupby(c.stage.ne(c.stage.shift()).cumsum()):  # no stroke between stages
                        ax.plot(part[x], part.val_acc, color=colour, lw=1.0 if staged else 1.6)
                    ax.plot(c[x].iloc[-1:], c.val_acc.iloc[-1:], color=colour, marker=marker, ms=6)
                    for at in _stage_starts(c)[x] if staged else []:
                        ax.axvline(at, color=colour, ls=":", lw=1, alpha=0.7)
        ylim = _zoom([c.val_acc for c in mine.values()]) if mine else (0, 100)
        below = sorted({k[0] for k, c in mine.items() if c.val_acc.max() < ylim[0]}, key=list(style).index)
        if below:
            row[0].text(0.01, 0.02, "below the axis: " + ", ".join(below), transform=row[0].transAxes, fontsize=8)
        row[0].set(title=f"{d} / {a}", xlabel="epoch (all stages)", ylabel="validation accuracy (%)", ylim=ylim)
        row[1].set(title=f"{d} / {a}", xlabel=f"cumulative training energy (J, {methods}; log)", ylim=ylim,
                   xscale="log" if any(c.joules.notna().any() for c in mine.values()) else "linear")
    legend(fig, style, extra=[(_line("0.35", "-", "o", lw=1.6), "mean over seeds"),
                              (_line("0.35", alpha=0.25, lw=0.7), "one seed"),
                              (_line("0.35", "-", "o", lw=1.0), "one seed of a\nmulti-stage algorithm"),
                              (_line("0.35", ":"), "its next stage begins")])
    _save(fig, path)


def plot_layer_accuracy(layers: pd.DataFrame, runs: pd.DataFrame, path: str | Path) -> None:
    """Test accuracy of each layer's or block's own predictor (mean ± sd over seeds, clipped at
    100), in the algorithm's colour, one panel per cell; the final prediction's accuracy dashed."""
    if layers.empty:
        _empty(path, "No algorithm in these runs reports per-layer or per-block accuracy\n"
                     "(MF, FF and CaFo do; bp has a single output).")
        return
    plt = _plt()
    style = styles(runs.algorithm)
    cells = sorted({tuple(k) for k in layers[CELL].itertuples(index=False)})
    ncol = min(4, len(cells))
    nrow = math.ceil(len(cells) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3.8 * nrow), squeeze=False)
    for ax in axes.flat[len(cells):]:
        ax.axis("off")
    for ax, (d, a, alg) in zip(axes.flat, cells):
        g = layers[(layers.dataset == d) & (layers.architecture == a) & (layers.algorithm == alg)]
        order = list(dict.fromkeys(g.layer))
        spread = [clipped_sd(g[g.layer == layer].test_accuracy, high=100.0) for layer in order]
        means = [m for m, _ in spread]
        ax.bar(range(len(order)), means, yerr=np.array([e for _, e in spread]).T, capsize=3, color=style[alg].colour)
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
        final = runs[(runs.dataset == d) & (runs.architecture == a) & (runs.algorithm == alg)].test_accuracy.mean()
        ax.axhline(final, color="k", ls="--", lw=1)
        lo = max(0.0, min(min(means), final) - 5)
        ax.set(title=f"{alg}: {d} / {a} (n={g.seed.nunique()})\nfinal prediction {final:.2f} % (dashed)",
               ylabel="test accuracy (%)", ylim=(lo, 100))
        ax.title.set_fontsize(9)
    _save(fig, path)


def _hbars(ax, names: list[str], spreads: list[tuple[float, list[float]]], colours: list, notes: list[str]) -> None:
    """Horizontal bars (first name on top), each with its clipped error bar and a note after it."""
    y = np.arange(len(names))
    ax.barh(y, [m for m, _ in spreads], xerr=np.array([e for _, e in spreads]).T, capsize=3,
            color=colours)
    for k, ((m, e), note) in enumerate(zip(spreads, notes)):
        ax.annotate(note, (m + e[1], k), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.18)
    ax.grid(axis="x", alpha=0.3)


def plot_to_target(tt: pd.DataFrame, fraction: float, path: str | Path) -> None:
    """Seconds and joules until the validation accuracy first reaches the target, one row per
    dataset and network: a bar per algorithm in its colour, mean ± sd (clipped at 0) over the seeds
    that reach it, how many did after it."""
    plt = _plt()
    style = styles(tt.algorithm)
    groups = sorted({(r.dataset, r.architecture) for r in tt.itertuples()})
    sizes = [tt[(tt.dataset == d) & (tt.architecture == a)].algorithm.nunique() for d, a in groups]
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 1.1 * len(groups) + 0.28 * sum(sizes)), squeeze=False,
                             gridspec_kw={"height_ratios": [n + 2 for n in sizes]})
    for row, (d, a) in zip(axes, groups):
        g = tt[(tt.dataset == d) & (tt.architecture == a)]
        target = g.target_acc.iloc[0]
        algs = [alg for alg in style if alg in set(g.algorithm)]
        for ax, col, unit in ((row[0], "seconds", "s"), (row[1], "energy_j", "J")):
            if not np.isfinite(target):
                ax.axis("off")
                ax.text(0.5, 0.5, f"{d} / {a}: no bp cell, so no target", ha="center", va="center")
                continue
            reached = [g[(g.algorithm == alg) & g.reached.astype(bool)][col] for alg in algs]
            _hbars(ax, algs, [clipped_sd(r) if len(r) else (0.0, [0.0, 0.0]) for r in reached],
                   [style[alg].colour for alg in algs],
                   [f"{len(r)}/{(g.algorithm == alg).sum()} reached" for r, alg in zip(reached, algs)])
            ax.set(title=f"{d} / {a}: target {target:.2f} % ({fraction:g} x bp)", xlabel=f"to target ({unit})")
            ax.title.set_fontsize(9)
    _save(fig, path)


def plot_energy_components(comp: pd.DataFrame, path: str | Path) -> None:
    """Mean energy per component of each cell (a bar per algorithm and network), stacked, each
    component in grey labelled with its method; the whisker: sd of the runs' totals, clipped at 0."""
    if comp.empty:
        _empty(path, "No run reports energy by component.")
        return
    plt = _plt()
    order = list(styles(comp.algorithm))
    datasets = sorted(comp.dataset.unique())
    keys = sorted({(r.component, r.method) for r in comp.itertuples()})
    greys = {k: plt.get_cmap("Greys")(0.2 + 0.35 * i / max(len(keys) - 1, 1)) for i, k in enumerate(keys)}
    sizes = [len(comp[comp.dataset == d].groupby(["architecture", "algorithm"])) for d in datasets]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(8, 1.0 * len(datasets) + 0.3 * sum(sizes)), squeeze=False,
                             gridspec_kw={"height_ratios": [n + 2 for n in sizes]})
    for ax, d in zip(axes[:, 0], datasets):
        sub = comp[comp.dataset == d]
        cells = sorted({(r.algorithm, r.architecture) for r in sub.itertuples()}, key=lambda c: (order.index(c[0]), c))
        mean = sub.groupby(["algorithm", "architecture", "component", "method"]).energy_j.mean()
        left = np.zeros(len(cells))
        for key in keys:
            vals = np.array([mean.get((*c, *key), 0.0) for c in cells])
            if vals.any():
                ax.barh(range(len(cells)), vals, left=left, color=greys[key], label=f"{key[0]} ({key[1]})")
                left += vals
        totals = sub.groupby(["algorithm", "architecture", "seed"]).energy_j.sum()
        spread = [clipped_sd(totals.loc[c]) for c in cells]  # their mean is the bar's end
        ax.errorbar([m for m, _ in spread], range(len(cells)), xerr=np.array([e for _, e in spread]).T, fmt="none",
                    ecolor="k", capsize=3, lw=1)
        ax.set_yticks(range(len(cells)), [f"{alg} ({a})" for alg, a in cells], fontsize=8)
        ax.invert_yaxis()
        ax.set(title=d, xlabel="training energy, mean over seeds (J)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, title="component (method)", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                  frameon=False)
    _save(fig, path)
