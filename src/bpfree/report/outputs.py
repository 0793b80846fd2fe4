"""The registry of the report's files: `Results` (what they are made from, each computed once),
one `Output` record per file in TABLES and PLOTS, and what the workflow's report rule declares
(docs/adding-a-plot-or-table.md adds one)."""
from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bpfree import io, published, stats, tiers
from bpfree.report import plots
from bpfree.report.formatting import KEYS, drop_empty, html_fragment, html_page, markdown, markdown_parts
from bpfree.report.load import components, layer_accuracies, read_curves
from bpfree.report.notes import notes
from bpfree.report.tables import BESIDE, absolute_table, delta_table, main_table, verdict_table
from bpfree.stats import StatsConfig


class Results:
    """What the tables and plots are made from, each computed once, on first use: `runs` (one row
    per run, as summary.csv), `raw` (the metrics.json records; empty for a recorded summary), and
    `cfg` (`protocol.statistics`)."""

    def __init__(self, runs: pd.DataFrame, raw: list[dict], cfg: StatsConfig):
        self.runs, self.raw, self.cfg = runs, raw, cfg

    @functools.cached_property
    def curves(self) -> dict[tuple, pd.DataFrame]:
        return read_curves(self.raw)

    @functools.cached_property
    def cells(self) -> pd.DataFrame:
        return stats.cell_summary(self.runs)

    @functools.cached_property
    def deltas(self) -> pd.DataFrame:
        return stats.deltas(self.runs, self.cfg)

    @functools.cached_property
    def to_target(self) -> pd.DataFrame:
        return stats.to_target_table(self.runs, self.curves, self.cfg.target_fraction)

    @functools.cached_property
    def search_budget(self) -> pd.DataFrame:
        return tiers.search_budget(self.raw)

    @functools.cached_property
    def notes(self) -> str:
        return "\n\n".join([notes(self.runs, self.cells, self.deltas, self.cfg),
                            *tiers.fidelity_note(self.search_budget)])

    @functools.cached_property
    def absolute(self) -> pd.DataFrame:
        return absolute_table(self.cells, self.runs, published.load("results"))

    @functools.cached_property
    def delta_parts(self) -> list[tuple[str, pd.DataFrame | str]]:
        """Deltas in the published layout, verdicts at the margins, published claims, notes."""
        dtable, claims = delta_table(self.deltas, self.runs, published.load("deltas"), self.cfg.confidence,
                                     published.load("claims"))
        return [("Deltas against bp, paired by seed (layout of the published table)", dtable),
                ("Verdicts at the declared margins", verdict_table(self.deltas)),
                ("Published claims: the original deltas and the authors' later claims, at our intervals and "
                 "margins", claims), ("Notes", self.notes)]


ABSOLUTE_TITLE = "Results per cell, published values beside ours"


SEARCH_TITLE = "Searches: the budget as spent"


def _shown(r: Results) -> tuple[pd.DataFrame, str]:
    """The absolute table without its columns that are empty in this report, and the notes with a
    line naming those columns."""
    table, empty = drop_empty(r.absolute)
    left_out = f"\n\nColumns with no value in this report, left out: {', '.join(empty)}." if empty else ""
    return table, r.notes + left_out


def absolute_md(r: Results) -> str:
    table, notes_text = _shown(r)
    return (f"# {ABSOLUTE_TITLE}\n\n" + markdown(table) + f"\n## {SEARCH_TITLE}\n\n"
            + (markdown(r.search_budget) if not r.search_budget.empty else "No search recorded.\n")
            + "\n" + notes_text + "\n")


def absolute_html(r: Results) -> str:
    """The absolute table in two parts that each fit a page: ours beside the published values, then
    the rest per cell."""
    table, notes_text = _shown(r)
    first = [c for c in table if c in KEYS or c in BESIDE]
    rest = [c for c in table if c in KEYS or c not in first]
    return html_page(ABSOLUTE_TITLE, [("Ours beside the published values", table[first]),
                                      ("More per cell", table[rest]), (SEARCH_TITLE, r.search_budget),
                                      ("Notes", notes_text)])


MAIN_TITLE = "Main results: accuracy, paired delta against bp, time and energy"


def main_html(r: Results) -> str:
    """The main table, one per dataset and network, as a fragment: the report's opening page shows
    it (workflow/report/workflow.rst)."""
    table, _ = drop_empty(main_table(r.cells, r.deltas, r.runs))
    groups = [(f"{d} / {a}", g.drop(columns=["dataset", "architecture"]))
              for (d, a), g in table.groupby(["dataset", "architecture"], sort=True)]
    note = (f"vs bp: the difference of means, paired by seed, with its bootstrap {r.cfg.confidence:.0%} interval; "
            "the verdict at the declared margin after multiplicity control. Everything else (the published values "
            "beside ours, memory, every delta and claim): table.html and deltas.html under 1. Tables.")
    return html_fragment(MAIN_TITLE, [*groups, ("", note)], "bpfree-main")


@dataclass(frozen=True)
class Output:
    """One file of the report: `path` under the report's folder, written by `write(results, path)`.
    With a `caption` (a file under workflow/report/) it is embedded in `snakemake --report`, under
    `category`, with `labels`; without, it is written but not embedded. `from_summary`: it can be
    made from a recorded summary.csv alone (`bpfree report --summary`)."""

    path: str
    write: Callable[[Results, Path], None]
    caption: str | None = None
    category: str = ""
    labels: dict | None = None
    from_summary: bool = False

    @property
    def key(self) -> str:
        """Its name among the report rule's outputs: "plots/to_target.png" -> "to_target_png"."""
        return re.sub(r"\W", "_", Path(self.path).name)


def table(path: str, write: Callable[[Results, Path], None], caption: str | None = None,
          label: str | None = None, from_summary: bool = False, category: str | None = None) -> Output:
    """A table: with a `label`, an HTML page among the report's tables; else a data file (or in
    `category`)."""
    category = category or ("1. Tables" if label else "3. Data")
    return Output(path, write, caption, category if caption else "", label and {"table": label}, from_summary)


def plot(name: str, draw: Callable[[Results, Path], None], label: str) -> Output:
    """A figure: plots/NAME.png, drawn by `draw(results, path)`, caption workflow/report/NAME.rst."""
    return Output(f"plots/{name}.png", draw, f"{name}.rst", "2. Figures", {"figure": label})


TABLES = (
    table("main.html", lambda r, p: io.write_text(p, main_html(r)), "main.rst", label="main results",
          category="0. Main results"),
    table("summary.csv", lambda r, p: io.write_csv(p, r.runs), "summary.rst"),
    table("cells.csv", lambda r, p: io.write_csv(p, r.cells), "cells.rst"),
    table("deltas.csv", lambda r, p: io.write_csv(p, r.deltas), "deltas_csv.rst", from_summary=True),
    table("to_target.csv", lambda r, p: io.write_csv(p, r.to_target), "to_target_csv.rst"),
    table("search.csv", lambda r, p: io.write_csv(p, r.search_budget), "search_csv.rst"),
    table("table.md", lambda r, p: io.write_text(p, absolute_md(r))),
    table("table.html", lambda r, p: io.write_text(p, absolute_html(r)), "table.rst",
          label="absolute, beside published"),
    table("deltas.md", lambda r, p: io.write_text(p, markdown_parts(r.delta_parts)), from_summary=True),
    table("deltas.html", lambda r, p: io.write_text(p, html_page("Deltas against bp", r.delta_parts)), "deltas.rst",
          label="paired deltas against bp", from_summary=True),
)
PLOTS = (
    plot("accuracy_vs_energy", lambda r, p: plots.plot_accuracy_energy(r.runs, p), "accuracy vs energy"),
    plot("accuracy_vs_cost", lambda r, p: plots.plot_accuracy_cost(r.runs, p), "accuracy vs CPU time"),
    plot("learning_curves", lambda r, p: plots.plot_learning_curves(r.runs, r.curves, p), "learning curves"),
    plot("layer_accuracy", lambda r, p: plots.plot_layer_accuracy(layer_accuracies(r.raw), r.runs, p),
         "per-layer accuracy"),
    plot("to_target", lambda r, p: plots.plot_to_target(r.to_target, r.cfg.target_fraction, p),
         "time and energy to target"),
    plot("energy_components", lambda r, p: plots.plot_energy_components(components(r.raw), p), "energy by component"),
)
OUTPUTS = TABLES + PLOTS  # every file of the report, in the order they are written


def output_paths(out_dir: str | Path, from_summary: bool = False) -> list[Path]:
    """The files `run_report` (or, `from_summary`, `report_from_summary`) writes into `out_dir`."""
    return [Path(out_dir) / o.path for o in OUTPUTS if o.from_summary or not from_summary]


def rule_outputs(report: Callable, captions: str, folder: str = "results") -> dict:
    """The workflow's report rule's `output:`: every file of OUTPUTS under `folder`, by its key;
    those with a caption wrapped in Snakemake's `report` (captions: their folder)."""
    out = {}
    for o in OUTPUTS:
        path = f"{folder}/{o.path}"
        out[o.key] = report(path, caption=f"{captions}/{o.caption}", category=o.category, labels=o.labels) \
            if o.caption else path
    return out
