"""The notes under the tables: how the deltas and verdicts were made, the measurement methods, and
the caveats of these runs (resumed, repeated seeds, unpaired cells, capped curves)."""
from __future__ import annotations

import pandas as pd

from bpfree import stats
from bpfree.compared import symbol
from bpfree.report.load import _methods
from bpfree.report.tables import BOARD, PUBLISHED_ENERGY, _board_why, _measured, _n_resumed
from bpfree.stats import CELL, StatsConfig


def _margins(cfg: StatsConfig) -> str:
    """The declared margins, as configured (whatever the runs let the verdicts use); a per-dataset
    margin as "test_accuracy ±0.25 pp on mnist, ±1.5 pp on fashion_mnist"."""
    def one(metric: str, m) -> str:
        unit = symbol(stats.DELTA_METRICS.get(metric))
        if isinstance(m, dict):
            return f"{metric} " + ", ".join(f"±{v:g} {unit} on {d}" for d, v in m.items())
        return f"{metric} ±{m:g} {unit}"
    return ", ".join(one(metric, m) for metric, m in cfg.margins.items()) or "none"


def _multiplicity(dl: pd.DataFrame, cfg: StatsConfig) -> str:
    """The multiplicity control in words, with the family it corrected over."""
    fam = dl[dl.multiplicity.fillna("") != ""] if "multiplicity" in dl else dl.iloc[:0]
    if fam.empty:
        return f"Multiplicity: {cfg.multiplicity}; no verdict was made, so there was nothing to correct."
    names = {"holm": "Holm-Bonferroni (family-wise error rate)", "bonferroni": "Bonferroni (family-wise error rate)",
             "fdr_bh": "Benjamini-Hochberg (false discovery rate)", "none": "none"}
    families = "; ".join(sorted(set(fam.multiplicity)))
    scope = ("each metric's verdicts are one family (accuracy verdicts corrected among themselves, time "
             "verdicts among themselves, ...)" if cfg.family == "metric" else "all the verdicts of this report "
             "are one family")
    return (f"Multiplicity: {names[cfg.multiplicity]} at alpha {cfg.alpha:g}; {scope}: {families} "
            f"({fam[CELL].drop_duplicates().shape[0]} cells against bp; energy estimates aside). Each verdict's "
            "p value is that of its claim (equivalent: the TOST p; better or worse: the one-sided test beyond the "
            "margin; for an unresolved one, the smallest of the three); "
            "deltas.csv gives it as p_value and the adjusted one as p_adjusted. A verdict whose adjusted p value is "
            "not below alpha is 'not resolved after ...', its seeds-needed estimate at the level alpha / m.")


def notes(runs: pd.DataFrame, cells: pd.DataFrame, dl: pd.DataFrame, cfg: StatsConfig) -> str:
    """Plain-text caveats under the tables: measurement methods, repeated seeds, unpaired cells,
    settings that differ inside a comparison."""
    out = [f"Deltas are paired by seed: bootstrap {cfg.confidence:.0%} {cfg.interval} interval over "
           f"{cfg.resamples} resamples of the common seeds (bootstrap seed {cfg.seed}). Accuracy in percentage points "
           "(difference of means), time, energy and memory in percent (ratio of means minus 1). An interval "
           "that contains 0 is 'not resolved at n = k', never 'equal'. At small n no bootstrap interval "
           "reaches its nominal coverage (on normal data, at a nominal 95 %, the expanded percentile interval "
           "covers about 91 % at n = 5 and 75 % at n = 3, the plain percentile interval 83 % and 76 %): read a result "
           "resolved at n < 10 as indicative."]
    if "energy_method" in runs:
        where = f" on {', '.join(sorted(set(runs.device.astype(str))))}" if "device" in runs else ""
        out.append("Our energy: " + _methods(runs) + where + ".")
    if "energy_dynamic_j" not in runs or runs.energy_dynamic_j.isna().all():
        why = "; ".join(sorted(set(runs.idle_note.dropna()))) if "idle_note" in runs else "no idle baseline"
        out.append(f"Dynamic energy (total minus idle power x time) not available: {why}.")
    out.append(f"Verdicts at a declared margin per metric (margins {_margins(cfg)}): {cfg.verdict_method}, "
               f"alpha {cfg.alpha:g}. 'equivalent within ±m' and 'better/worse by more than m' are claims at that "
               "margin; 'not resolved' comes with an estimate of the paired seeds that would resolve it "
               f"({cfg.power:.0%} power, if the observed mean and sd of the per-seed differences were the true ones), "
               "with the n and the sd it rests on and the range it spans over the sd's own 95 % interval.")
    out.append(_multiplicity(dl, cfg))
    out.append("The intervals and verdicts cover the randomness of the final runs' seeds only: each cell's "
               "hyperparameters come from one search, and another search (another sampler seed, another "
               "fidelity) could choose other values. That variation is not in any interval here.")
    if "energy_method" in runs and runs.energy_method.astype(str).str.contains("estimate").any():
        out.append("Energy from CodeCarbon's estimate (no energy counter on this machine) is a constant power "
                   "times the run's time: its deltas repeat the time deltas and get no verdict of their own.")
    out.append(f"Published energy: {PUBLISHED_ENERGY}, converted from Wh to J; published runs used an A100 GPU, "
               "3 runs per cell with some seeds duplicated, per-algorithm patience and unequal tuning budgets. "
               f"The column that measures the same thing is '{BOARD}'; a published energy claim is held against it "
               "where our runs have it, else against our energy (then the claims table's metric is energy_j: a "
               "different quantity).")
    if not _measured(runs, "energy_board_j"):
        out.append(f"{BOARD}: {_board_why(runs)} (it needs a GPU's power reading; never reported as 0).")
    if "energy_window_warning" in runs:
        for r in runs[runs.energy_window_warning.notna()].itertuples(index=False):
            out.append(f"WARNING: {r.dataset}/{r.architecture}/{r.algorithm} seed {r.seed}: {r.energy_window_warning}.")
    dup = cells[cells.duplicate_seeds]
    for c in dup.itertuples(index=False):
        out.append(f"WARNING: a seed repeats in {c.dataset}/{c.architecture}/{c.algorithm} (seeds {c.seeds}): "
                   "that cell is not compared.")
    for r in dl.drop_duplicates(CELL).itertuples(index=False):
        if r.n_pairs < 2 or r.note:
            out.append(f"{r.dataset}/{r.architecture}/{r.algorithm} vs bp: {r.status}"
                       + (f"; {r.note}" if r.note else ""))
    out += _cell_caveats(runs)
    return "\n\n".join(o for o in out if o)


def _cell_caveats(runs: pd.DataFrame) -> list[str]:
    """Per cell: runs resumed after a kill, runs that shared their host with other metered runs,
    runs whose training loss diverged (a stage ended at it), runs the epoch cap ended before their
    patience ran out."""
    def count(g: pd.DataFrame, col: str) -> int:
        return int((g[col].fillna(0) > 0).sum()) if col in g else 0

    out = []
    for key, g in runs.groupby(CELL, sort=True):
        cell, n = "/".join(key), len(g)
        if (k := _n_resumed(g)):
            out.append(f"{cell}: {k} of {n} runs resumed after a kill; their time and energy are totals over all "
                       "their processes.")
        if (k := count(g, "overlaps")):  # bpfree.overlap: another metered run shared the host during the window
            out.append(f"{cell}: {k} of {n} runs shared their host with other metered runs (metrics.json: "
                       "overlapped_with): their wall time and any socket- or device-wide energy counter include "
                       "the neighbours' load; CPU time counts this process only.")
        if (k := count(g, "diverged_stages")):
            out.append(f"{cell}: the training loss diverged in {k} of {n} runs (metrics.json: divergence); each "
                       "such stage ended there as patience would and kept its best-validation weights "
                       "(docs/protocol.md, 'Final runs'): the hyperparameters are unstable over a full run.")
        if (k := count(g, "capped_stages")):  # the rule measured, not the algorithm: say where the cap cut
            out.append(f"{cell}: the epoch cap ({g.epoch_cap.iloc[0]:.0f}) ended {k} of {n} runs before their "
                       f"patience ({g.patience.iloc[0]:.0f} epochs) ran out, their validation quantity still "
                       "improving: a larger protocol.stopping.max_epochs might change this cell.")
    return out
