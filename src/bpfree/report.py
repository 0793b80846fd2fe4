"""Aggregation: one tidy row per final run, a Markdown table of means and deltas against bp, plots."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bpfree import io

CELL = ["dataset", "architecture", "algorithm"]
COLUMNS = ["dataset", "architecture", "algorithm", "seed", "test_accuracy", "val_accuracy", "train_time_s",
           "epochs", "best_epoch", "energy_j", "energy_method", "emissions_kg", "peak_memory_mib",
           "peak_memory_method", "n_params", "train_flops", "predict_flops", "achieved_gflops", "device"]


def summarize(metric_files: list[str | Path]) -> pd.DataFrame:
    rows = [io.read_json(f) for f in metric_files]
    df = pd.DataFrame(rows)
    cols = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
    flat = df[cols].drop(columns=[c for c in ("hyperparameters", "energy_components", "layer_test_accuracy")
                                  if c in df.columns])
    return flat.sort_values(CELL + ["seed"]).reset_index(drop=True)


def _mean_sd(s: pd.Series, fmt: str) -> str:
    if len(s) < 2:
        return f"{s.mean():{fmt}} (n=1)"
    return f"{s.mean():{fmt}} ± {s.std(ddof=1):{fmt}}"


def table(df: pd.DataFrame) -> str:
    """Markdown: per cell mean ± sd (n) of accuracy, time, energy, memory, and the delta of the
    mean against bp on the same dataset and architecture."""
    lines = ["| dataset | architecture | algorithm | n | test accuracy (%) | Δacc vs bp (pp) | train time (s) "
             "| Δtime vs bp | energy (J) | energy method | peak memory (MiB) |",
             "|" + "---|" * 11]
    for (d, a, alg), g in df.groupby(CELL, sort=True):
        ref = df[(df.dataset == d) & (df.architecture == a) & (df.algorithm == "bp")]
        if alg == "bp" or ref.empty:
            dacc = dtime = "–"
        else:
            dacc = f"{g.test_accuracy.mean() - ref.test_accuracy.mean():+.2f}"
            dtime = f"{100 * (g.train_time_s.mean() / ref.train_time_s.mean() - 1):+.0f} %"
        methods = ", ".join(sorted(set(g.energy_method)))
        lines.append(f"| {d} | {a} | {alg} | {len(g)} | {_mean_sd(g.test_accuracy, '.2f')} | {dacc} | "
                     f"{_mean_sd(g.train_time_s, '.1f')} | {dtime} | {_mean_sd(g.energy_j, '.0f')} | {methods} | "
                     f"{_mean_sd(g.peak_memory_mib, '.0f')} |")
    return "\n".join(lines) + "\n"


def plot_accuracy_energy(df: pd.DataFrame, path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(df.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        sub = df[df.dataset == d]
        for (arch, alg), g in sub.groupby(["architecture", "algorithm"]):
            ax.scatter(g.energy_j, g.test_accuracy, label=f"{alg} ({arch})", alpha=0.8)
        methods = ", ".join(sorted(set(sub.energy_method)))
        ax.set(title=d, xlabel=f"energy of training (J, {methods})", ylabel="test accuracy (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    io.save_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_learning_curves(df: pd.DataFrame, curves: dict[tuple, pd.DataFrame], path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.dataset, r.architecture) for r in df.itertuples()})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (d, a) in zip(axes[0], groups):
        algs = sorted(df[(df.dataset == d) & (df.architecture == a)].algorithm.unique())
        for k, alg in enumerate(algs):
            for (dd, aa, al, seed), c in curves.items():
                if (dd, aa, al) == (d, a, alg):
                    ax.plot(c.epoch, c.val_acc, color=f"C{k}", alpha=0.7,
                            label=alg if seed == min(s for (x, y, z, s) in curves if (x, y, z) == (d, a, alg)) else None)
        ax.set(title=f"{d} / {a}", xlabel="epoch (all stages)", ylabel="validation accuracy (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    io.save_figure(fig, path, dpi=120)
    plt.close(fig)


def run_report(metric_files: list[str | Path], out_dir: str | Path) -> pd.DataFrame:
    """Write summary.csv, table.md and the plots into `out_dir` (the epochs.csv of each run is read
    from beside its metrics.json)."""
    out = Path(out_dir)
    df = summarize(metric_files)
    curves = {}
    for f in metric_files:
        m = io.read_json(f)
        curves[(m["dataset"], m["architecture"], m["algorithm"], m["seed"])] = pd.read_csv(Path(f).parent / "epochs.csv")
    io.write_csv(out / "summary.csv", df)
    io.write_text(out / "table.md", table(df))
    plot_accuracy_energy(df, out / "plots" / "accuracy_vs_energy.png")
    plot_learning_curves(df, curves, out / "plots" / "learning_curves.png")
    return df
