"""Aggregation of finished final runs into the files a reviewer reads.

Written into `out_dir` (the files of OUTPUTS, the one list that `run_report` writes and the
workflow's report rule declares; docs/adding-a-plot-or-table.md adds one):
  summary.csv    one row per run            cells.csv     n, mean, sd of every metric per cell
  deltas.csv     paired deltas against bp with bootstrap intervals and their status
  to_target.csv  time and energy of each run to the target accuracy
  table.md/.html absolute table, the published values beside ours
  deltas.md/.html delta table in the published layout, the verdicts at the declared margins (with
                 seeds needed where unresolved), and each published claim checked: the original
                 deltas and the authors' later claims (published_claims.csv)
  plots/         accuracy_vs_energy, accuracy_vs_cost, learning_curves, layer_accuracy, to_target,
                 energy_components

The package, one job a module, each importing only those before it: load (metrics.json files
checked and flattened), formatting, tables, notes, style (how the figures look: one colour and
marker per algorithm), plots, outputs (the registry); this module
writes them.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bpfree import io, published, stats, tiers
from bpfree.report.formatting import DASH, fmt_delta, fmt_mean_sd, html_page, markdown, markdown_parts, verdict
from bpfree.report.load import COLUMNS, components, layer_accuracies, load_runs, read_curves, summarize
from bpfree.report.outputs import OUTPUTS, PLOTS, TABLES, Output, Results, output_paths, plot, rule_outputs, table
from bpfree.report.plots import pareto_front
from bpfree.report.tables import absolute_table, delta_table, margin_verdict, verdict_table
from bpfree.stats import CELL, StatsConfig

__all__ = [  # what callers use (cli, the workflow, workflow/scripts, tests); `published` and `stats` as before
    "COLUMNS", "DASH", "OUTPUTS", "PLOTS", "TABLES", "Output", "Results", "absolute_table", "components",
    "delta_table", "fmt_delta", "fmt_mean_sd", "html_page", "layer_accuracies", "load_runs", "margin_verdict",
    "markdown", "markdown_parts", "output_paths", "pareto_front", "plot", "published", "read_curves",
    "report_from_summary", "rule_outputs", "run_report", "stats", "summarize", "table", "verdict",
    "verdict_table",
]


def _write(results: Results, out_dir: str | Path, from_summary: bool = False) -> None:
    for o in OUTPUTS:
        if o.from_summary or not from_summary:
            o.write(results, Path(out_dir) / o.path)


def report_from_summary(summary_csv: str | Path, out_dir: str | Path,
                        statistics: StatsConfig | dict | None = None) -> pd.DataFrame:
    """The statistics of `run_report` (deltas.csv, deltas.md/.html: deltas, verdicts, published
    claims) recomputed from a recorded summary.csv, e.g. one committed under docs/: what needs only
    the per-run figures, without the runs' folders (no plots, no time to target)."""
    cfg = statistics if isinstance(statistics, StatsConfig) else StatsConfig.from_dict(statistics)
    runs = io.read_csv(summary_csv, "--summary")
    missing = [k for k in (*CELL, "seed", "test_accuracy") if k not in runs]
    if missing:
        raise ValueError(f"{summary_csv}: lacks the columns {', '.join(missing)}")
    tiers.check([{**r, "_path": f"{summary_csv} row {i + 2}"} for i, r in enumerate(runs.to_dict("records"))])
    _write(Results(runs, [], cfg), out_dir, from_summary=True)
    return runs


def run_report(metric_files: list[str | Path], out_dir: str | Path,
               statistics: StatsConfig | dict | None = None) -> pd.DataFrame:
    """Write every table and plot of OUTPUTS into `out_dir`; returns the per-run summary.
    `statistics` is the config's `protocol.statistics` (its defaults otherwise)."""
    cfg = statistics if isinstance(statistics, StatsConfig) else StatsConfig.from_dict(statistics)
    raw = load_runs(metric_files)
    if not raw:
        raise ValueError("report: no metrics.json given")
    tiers.check(raw)
    results = Results(summarize(raw), raw, cfg)
    _write(results, out_dir)
    return results.runs
