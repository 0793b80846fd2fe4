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
  plots/         accuracy_vs_energy, learning_curves, layer_accuracy, to_target, energy_components
"""
from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bpfree import io, published, stats, tiers
from bpfree.errors import FileError
from bpfree.stats import CELL, StatsConfig

COLUMNS = ["dataset", "architecture", "algorithm", "locality", "optimizer", "seed", "test_accuracy", "val_accuracy", "train_time_s",
           "epochs", "best_epoch", "resumed", "segments", "energy_j", "energy_dynamic_j", "energy_method",
           "energy_board_j", "energy_board_method", "energy_window_warning", "emissions_kg",
           "peak_memory_mib", "peak_memory_method", "n_params", "train_flops", "predict_flops", "achieved_gflops",
           "device"]
PUBLISHED_ENERGY = ("GPU board power polled at 5 Hz, trapezoid-integrated, no idle subtraction (the original "
                    "study's code; see published/PROVENANCE.md)")
BOARD = "GPU board energy (J), the original study's method"
LATER = {"camera-ready": "camera-ready (PPAM 2026)", "mf-v2": "Mono-Forward paper v2 (May 2026)"}
DASH = "–"
NON_NEGATIVE = ("train_time_s", "cpu_time_s", "energy_j", "energy_board_j", "peak_memory_mib", "epochs", "train_flops")


# ---- loading ------------------------------------------------------------------------------------

def load_runs(metric_files: list[str | Path]) -> list[dict]:
    runs = []
    for f in metric_files:
        m = io.read_json(f, "metrics.json")
        if not isinstance(m, dict):
            raise FileError(f"metrics.json {f} is not a JSON object; delete it and rerun its final run")
        missing = [k for k in ("dataset", "architecture", "algorithm", "seed", "test_accuracy") if k not in m]
        if missing:
            raise FileError(f"{f}: metrics.json lacks {', '.join(missing)}; delete it and rerun its final run")
        acc = m["test_accuracy"]
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
            # would be dropped from every mean without a word
            raise FileError(f"{f}: test_accuracy = {acc!r} is not a finite number; delete it and rerun its final run")
        if not 0.0 <= acc <= 100.0:
            raise FileError(f"{f}: test_accuracy = {acc!r} is not a percentage (0 to 100): not a result of this "
                            "benchmark; delete it and rerun its final run")
        for k in NON_NEGATIVE:
            v = m.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise FileError(f"{f}: {k} = {v!r} is negative, which no measurement gives; delete it and rerun "
                                "its final run")
        m["_path"] = str(f)
        runs.append(m)
    return runs


def _methods(df: pd.DataFrame) -> str:
    """The energy methods of these runs, sorted and comma-separated ("?" if none recorded)."""
    return ", ".join(sorted(set(df.energy_method.dropna()))) if "energy_method" in df else "?"


def summarize(runs: list[dict]) -> pd.DataFrame:
    """One flat row per run of `load_runs`, sorted by cell and seed. Nested fields are dropped but
    for three kept flat, so that two studies' summaries can be put side by side: each setting of
    `hyperparameters` as `hp_<name>`, and the provenance's `git_commit` and `run_sha256`."""
    flat = []
    for m in runs:
        prov = m.get("provenance") if isinstance(m.get("provenance"), dict) else {}
        hp = m.get("hyperparameters") if isinstance(m.get("hyperparameters"), dict) else {}
        flat.append({**m, **{f"hp_{k}": v for k, v in hp.items() if not isinstance(v, (dict, list))},
                     "git_commit": prov.get("git_commit"), "run_sha256": prov.get("run_sha256")})
    df = pd.DataFrame(flat).drop(columns=["_path"], errors="ignore")
    nested = [c for c in df.columns if df[c].map(lambda v: isinstance(v, (dict, list))).any()]
    df = df.drop(columns=nested)  # hyperparameters, energy_components, provenance...: kept in metrics.json
    cols = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
    return df[cols].sort_values(CELL + ["seed"]).reset_index(drop=True)


def read_curves(runs: list[dict]) -> dict[tuple, pd.DataFrame]:
    """epochs.csv of each run (beside its metrics.json), keyed by (dataset, architecture, algorithm,
    seed). FileError naming the file if it is missing, unreadable or shorter than the run's epochs:
    a dropped curve would make time-to-target say "not reached" without a word."""
    curves = {}
    for m in runs:
        f = Path(m["_path"]).parent / "epochs.csv"
        if not f.exists():
            raise FileError(f"{f} is missing beside its metrics.json: restore it, or delete the run's folder and "
                            "rerun it")
        df = io.read_csv(f, "epochs.csv", ": restore it, or delete the run's folder and rerun it")
        n = m.get("epochs")
        if isinstance(n, int) and (len(df) < n or "val_acc" not in df):
            raise FileError(f"{f} holds {len(df)} epochs, its metrics.json {n}: it is truncated; restore it, or "
                            "delete the run's folder and rerun it")
        curves[(m["dataset"], m["architecture"], m["algorithm"], m["seed"])] = df
    return curves


def components(runs: list[dict]) -> pd.DataFrame:
    """Long table: one row per run and energy component, with its method."""
    rows = []
    for m in runs:
        for comp, v in (m.get("energy_components") or {}).items():
            v = v if isinstance(v, dict) else {"j": v}
            j, method = v.get("j"), v.get("method", m.get("energy_method", "?"))
            rows.append({**{k: m[k] for k in CELL}, "seed": m["seed"], "component": comp, "energy_j": j,
                         "method": method})
    return pd.DataFrame(rows, columns=[*CELL, "seed", "component", "energy_j", "method"])


def layer_accuracies(runs: list[dict]) -> pd.DataFrame:
    rows = [{**{k: m[k] for k in CELL}, "seed": m["seed"], "layer": layer, "test_accuracy": acc}
            for m in runs for layer, acc in (m.get("layer_test_accuracy") or {}).items()]
    return pd.DataFrame(rows, columns=[*CELL, "seed", "layer", "test_accuracy"])


# ---- formatting ---------------------------------------------------------------------------------

def _num(x: float, fmt: str) -> str:
    return DASH if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:{fmt}}"


def fmt_mean_sd(n: int, mean: float, sd: float, fmt: str) -> str:
    if n == 0 or not math.isfinite(mean):
        return DASH
    if n < 2:
        return f"{mean:{fmt}} (n=1, no sd)"
    return f"{mean:{fmt}} ± {sd:{fmt}} (n={n})"


def fmt_delta(row: pd.Series | dict | None) -> str:
    """'+0.12 [-0.05, +0.30] pp, not resolved at n = 5' and the like."""
    if row is None:
        return DASH
    unit = " pp" if row["unit"] == "pp" else " %"
    fmt = "+.2f" if row["unit"] == "pp" else "+.1f"
    if not math.isfinite(row["estimate"]):
        return row["status"]
    text = f"{row['estimate']:{fmt}}{unit}"
    if math.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:{fmt}}, {row['ci_high']:{fmt}}]"
    if row["status"] != "resolved":
        text += f", {row['status']}"
    return text


def verdict(row: pd.Series | dict | None, published_value: float) -> str:
    """What our paired interval says about a published delta."""
    if published_value is None or not math.isfinite(published_value):
        return "no published value"
    if row is None or not math.isfinite(row["estimate"]):
        return "not compared: " + (row["status"] if row is not None else "no run of ours")
    if not row["resolved"]:
        return f"cannot resolve: {row['status']}"
    inside = row["ci_low"] <= published_value <= row["ci_high"]
    if published_value == 0:
        return "contradicts (published 0, ours resolved)"
    same = (row["estimate"] > 0) == (published_value > 0)
    where = "published value inside our interval" if inside else "published value outside our interval"
    return f"{'supports the sign' if same else 'contradicts the sign'} ({where})"


def markdown(df: pd.DataFrame) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_page(title: str, parts: list[tuple[str, pd.DataFrame | str]]) -> str:
    """A standalone HTML page of headed tables or paragraphs (the report embeds it)."""
    import html

    body = []
    for head, part in parts:
        if head:
            body.append(f"<h3>{html.escape(head)}</h3>")
        body.append(part.to_html(index=False, escape=True, border=0) if isinstance(part, pd.DataFrame)
                    else "".join(f"<p>{html.escape(p)}</p>" for p in part.split("\n\n") if p.strip()))
    style = ("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eee}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h2>{html.escape(title)}</h2>{''.join(body)}</body></html>\n")


# ---- tables -------------------------------------------------------------------------------------

def _pub_lookup(pub: pd.DataFrame, keys: dict) -> pd.Series | None:
    sel = pub
    for k, v in keys.items():
        sel = sel[sel[k] == v]
    return sel.iloc[0] if len(sel) else None


def absolute_table(cells: pd.DataFrame, runs: pd.DataFrame, pub: pd.DataFrame) -> pd.DataFrame:
    """Per cell: ours (mean ± sd, n) beside the published value of the same cell, and the
    algorithm's own authors' figure on their network (published_field.csv) as a reference."""
    field = published.load("field")
    rows = []
    for c in cells.itertuples(index=False):
        g = runs[(runs.dataset == c.dataset) & (runs.architecture == c.architecture) & (runs.algorithm == c.algorithm)]
        p = _pub_lookup(pub, {"dataset": c.dataset, "architecture": c.architecture, "algorithm": c.algorithm})
        cell = dict(zip(cells.columns, c))

        def ours(m: str, fmt: str) -> str:  # n, mean and sd as stats.cell_summary made them
            return fmt_mean_sd(cell[f"{m}_n"], cell[f"{m}_mean"], cell[f"{m}_sd"], fmt) if f"{m}_n" in cell else DASH

        def theirs(col: str, fmt: str, scale: float = 1.0) -> str:
            return DASH if p is None else _num(float(p[col]) * scale, fmt)
        methods = _methods(g)
        rows.append({
            "dataset": c.dataset, "architecture": c.architecture, "algorithm": c.algorithm,
            "locality": _locality(g), "seeds": c.seeds + (" (a seed repeats!)" if c.duplicate_seeds else ""),
            "test accuracy (%)": ours("test_accuracy", ".2f"),
            "published accuracy (%)": DASH if p is None else
            f"{p.test_acc_mean:.2f} ± {p.test_acc_sd:.2f} (n={p.n_runs}, {p.source})",
            "train time (s)": ours("train_time_s", ".1f"), "published time (s)": theirs("train_time_s", ".1f"),
            "CPU time (s)": ours("cpu_time_s", ".1f"), "train TFLOP": _scaled(cell, "train_flops", 1e-12, ".1f"),
            "load (1 min)": ours("load_1m_mean", ".2f"),
            "energy (J)": ours("energy_j", ".1f"), "energy method": methods,
            "dynamic energy (J)": ours("energy_dynamic_j", ".1f"),
            BOARD: ours("energy_board_j", ".1f") if _measured(g, "energy_board_j") else _board_why(g),
            "published energy (J)": theirs("energy_wh", ".0f", 3600.0),
            "peak memory (MiB)": ours("peak_memory_mib", ".0f"),
            "published memory (MiB)": theirs("peak_mem_mib", ".0f"),
            "epochs": ours("epochs", ".1f"), "published epochs": theirs("epochs", ".1f"),
            "resumed runs": f"{_n_resumed(g)} of {len(g)}",
            "its authors' figure (%), their network": _field_reference(field, c.algorithm, g, c.dataset),
        })
    return pd.DataFrame(rows)


def _scaled(cell: dict, metric: str, scale: float, fmt: str) -> str:
    """A cell's mean of `metric` times `scale` (e.g. FLOPs as TFLOP), or a dash."""
    mean = cell.get(f"{metric}_mean")
    return DASH if mean is None or not math.isfinite(mean) else f"{mean * scale:{fmt}}"


def _field_reference(field: pd.DataFrame, variant: str, g: pd.DataFrame, dataset: str) -> str:
    """The field table's figure for this variant (else its implementation) on this dataset:
    "98.30 (LeNet (BioTorch), V)", or a dash."""
    impl = g["impl"].iloc[0] if "impl" in g and len(g) else variant
    rows = field[(field.dataset == dataset) & (field.variant == variant)]
    if rows.empty:
        rows = field[(field.dataset == dataset) & (field.impl == impl) & (field.variant == impl)]
    return DASH if rows.empty else "; ".join(f"{r.test_acc:.2f} ({r.network}, {r.tag})" for r in rows.itertuples())


def _locality(g: pd.DataFrame) -> str:
    """The locality class the runs of a cell declare (bpfree.algorithms.base.LOCALITIES)."""
    return ", ".join(sorted(set(g.locality.dropna()))) or DASH if "locality" in g else DASH


def _measured(g: pd.DataFrame, col: str) -> bool:
    return col in g and pd.to_numeric(g[col], errors="coerce").notna().any()


def _board_why(g: pd.DataFrame) -> str:
    """Why a cell has no GPU board energy: never 0, never blank."""
    why = sorted(set(g.energy_board_method.dropna().astype(str))) if "energy_board_method" in g else []
    return "; ".join(why) or "unavailable: not recorded by these runs"


def _n_resumed(g: pd.DataFrame) -> int:
    return int(g.resumed.eq(True).sum()) if "resumed" in g else 0


def delta_table(dl: pd.DataFrame, runs: pd.DataFrame, pub: pd.DataFrame,
                confidence: float = 0.95, claims_pub: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The published layout (family, dataset, architecture, variant, then each delta) with ours and
    our interval beside the published figure; and one row per published claim (the original deltas,
    then the authors' later claims of `claims_pub`) with its verdicts."""
    rows, claims = [], []
    ci = f"{confidence:.0%} CI"
    for (d, a, alg), g in dl.groupby(CELL, sort=True):
        by_metric = {r.metric: r._asdict() for r in g.itertuples(index=False)}
        p = _pub_lookup(pub, {"dataset": d, "architecture": a, "variant": alg})
        impl = runs.loc[(runs.algorithm == alg), "impl"].iloc[0] if "impl" in runs else alg
        row = {"family": p.family if p is not None else impl, "dataset": d, "architecture": a, "variant": alg,
               "locality": _locality(runs[runs.algorithm == alg]), "n pairs": max((r["n_pairs"] for r in by_metric.values()), default=0)}
        for m, col in (("test_accuracy", "delta_acc_pp"), ("train_time_s", "delta_time_pct"),
                       ("energy_j", "delta_energy_pct"), ("energy_dynamic_j", None),
                       ("energy_board_j", None), ("peak_memory_mib", "delta_mem_pct")):
            if col is None and not _has_estimate(by_metric.get(m)):
                continue
            label = col or {"energy_dynamic_j": "delta_dynamic_energy_pct", "energy_board_j": "delta_board_energy_pct"}[m]
            row[f"{label} ours [{ci}]"] = fmt_delta(by_metric.get(m))
            if col:
                pv = float(p[col]) if p is not None else float("nan")
                row[f"{label} published"] = _num(pv, "+.2f")
                if p is not None:
                    ours = _like_with_like(by_metric, m)
                    claims.append({"source": "original (published table)", "dataset": d, "architecture": a,
                                   "variant": alg, "metric": _metric_label(ours, m), "condition": "",
                                   "published": f"{pv:+.2f}", f"ours [{ci}]": fmt_delta(ours),
                                   "against 0 (sign)": verdict(ours, pv), **margin_verdict(ours, pv, pv)})
        for c in _later_claims(claims_pub, d, a, alg):
            ours = _like_with_like(by_metric, c.metric)
            stated = c.text if c.stated != "difference" else (
                f"{c.low:+g}" if c.low == c.high else f"{c.low:+g} to {c.high:+g}")
            claims.append({"source": LATER.get(c.source, c.source), "dataset": d, "architecture": a, "variant": alg,
                           "metric": _metric_label(ours, c.metric),
                           "condition": c.condition if isinstance(c.condition, str) else "", "published": stated,
                           f"ours [{ci}]": fmt_delta(ours), "against 0 (sign)": DASH,
                           **margin_verdict(ours, c.low, c.high, c.stated)})
        rows.append(row)
    cols = ["source", "dataset", "architecture", "variant", "metric", "condition", "published", f"ours [{ci}]",
            "against 0 (sign)", "published at the margin", "ours at the margin", "agreement"]
    return pd.DataFrame(rows), pd.DataFrame(claims, columns=cols)


def _has_estimate(row: dict | None) -> bool:
    return row is not None and math.isfinite(row["estimate"])


def _like_with_like(by_metric: dict, metric: str) -> dict | None:
    """Our delta to hold a published energy claim against: the GPU board energy (the study's
    quantity) where these runs measured it, else our energy (a different quantity: the table says
    which in its `metric` column)."""
    if metric == "energy_j" and _has_estimate(by_metric.get("energy_board_j")):
        return by_metric["energy_board_j"]
    return by_metric.get(metric)


def _metric_label(ours: dict | None, metric: str) -> str:
    if ours is None:
        return metric
    return ours["metric"] + (" (not the study's quantity: see the notes)" if ours["metric"] == "energy_j" else "")


def _later_claims(claims_pub: pd.DataFrame | None, d: str, a: str, alg: str) -> list:
    if claims_pub is None:
        return []
    return [c for c in claims_pub.itertuples(index=False)
            if all(fnmatch.fnmatchcase(v, pat) for v, pat in ((d, c.dataset), (a, c.architecture), (alg, c.variant)))]


def margin_verdict(ours: dict | None, low: float, high: float, stated: str = "difference") -> dict:
    """A published claim and our delta, each classified at our margin for that metric; whether they
    agree. `low`-`high`: the claimed delta (one value: low = high) in pp or %."""
    out = {"published at the margin": DASH, "ours at the margin": DASH, "agreement": DASH}
    if stated == "withdrawn":
        out["agreement"] = "withdrawn by its authors: nothing to test"
        if ours is not None and ours.get("verdict"):
            out["ours at the margin"] = ours["verdict"]
        return out
    if ours is None or not ours.get("verdict_kind"):
        out["agreement"] = "no verdict of ours: " + (ours["status"] if ours is not None else "no run of ours")
        return out
    m, unit = ours["margin"], ours["unit"]
    up = ours["metric"] in stats.HIGHER_IS_BETTER
    claim = stats.EQUIVALENT if stated == "equivalent" else stats.classify_interval(low, high, m, up)
    out["published at the margin"] = stats.verdict_text(claim, m, unit) if claim != stats.UNRESOLVED else \
        f"spans the ±{m:g} margin: no verdict at it"
    out["ours at the margin"] = ours["verdict"]
    if ours["verdict_kind"] == stats.UNRESOLVED:
        needed = ours.get("seeds_needed_note") or "no estimate"
        out["agreement"] = f"not resolved: {needed}"
    elif claim == stats.UNRESOLVED:
        out["agreement"] = "the claim is not a statement at this margin"
    else:
        out["agreement"] = "agrees" if claim == ours["verdict_kind"] else "disagrees"
    return out


def verdict_table(dl: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and metric with a verdict: the margin, the interval it rests on, the method,
    and for an unresolved one the seeds-needed estimate."""
    rows = []
    for r in dl[dl.verdict.fillna("") != ""].itertuples(index=False):
        unit = "pp" if r.unit == "pp" else "%"
        fmt = "+.2f" if r.unit == "pp" else "+.1f"
        rows.append({"dataset": r.dataset, "architecture": r.architecture, "variant": r.algorithm, "metric": r.metric,
                     "n pairs": r.n_pairs, "margin": f"±{r.margin:g} {unit}" if math.isfinite(r.margin) else DASH,
                     "p (adjusted)": DASH if not math.isfinite(r.p_value) else
                     f"{r.p_value:.3g} ({_num(r.p_adjusted, '.3g')})",
                     "interval of the verdict": f"[{_num(r.verdict_low, fmt)}, {_num(r.verdict_high, fmt)}] {unit}",
                     "verdict": r.verdict, "method": r.verdict_method,
                     "seeds needed (estimate)": r.seeds_needed_note or DASH})
    return pd.DataFrame(rows, columns=["dataset", "architecture", "variant", "metric", "n pairs", "margin",
                                       "p (adjusted)", "interval of the verdict", "verdict", "method",
                                       "seeds needed (estimate)"])


def _margins(cfg: StatsConfig) -> str:
    """The declared margins, as configured (whatever the runs let the verdicts use); a per-dataset
    margin as "test_accuracy ±0.25 pp on mnist, ±1.5 pp on fashion_mnist"."""
    def one(metric: str, m) -> str:
        unit = "pp" if stats.DELTA_METRICS.get(metric) == "pp" else "%"
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
            "p value is that of its claim (equivalent: the TOST p; better or worse: the one-sided test beyond the margin; for an unresolved one, the smallest of the three); "
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
    for key, g in runs.groupby(CELL, sort=True):
        if (k := _n_resumed(g)):
            out.append(f"{'/'.join(key)}: {k} of {len(g)} runs resumed after a kill; their time and energy are "
                       "totals over all their processes.")
    dup = cells[cells.duplicate_seeds]
    for c in dup.itertuples(index=False):
        out.append(f"WARNING: a seed repeats in {c.dataset}/{c.architecture}/{c.algorithm} (seeds {c.seeds}): "
                   "that cell is not compared.")
    for r in dl.drop_duplicates(CELL).itertuples(index=False):
        if r.n_pairs < 2 or r.note:
            out.append(f"{r.dataset}/{r.architecture}/{r.algorithm} vs bp: {r.status}"
                       + (f"; {r.note}" if r.note else ""))
    if "capped_stages" in runs:  # the rule measured, not the algorithm: say where the cap cut the curves
        for key, g in runs.groupby(CELL, sort=True):
            k = int((g.capped_stages.fillna(0) > 0).sum())
            if k:
                out.append(f"{'/'.join(key)}: the epoch cap ({g.epoch_cap.iloc[0]:.0f}) ended {k} of {len(g)} runs "
                           f"before their patience ({g.patience.iloc[0]:.0f} epochs) ran out, their validation "
                           "quantity still improving: a larger protocol.stopping.max_epochs might change this cell.")
    return "\n\n".join(o for o in out if o)


# ---- plots --------------------------------------------------------------------------------------

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


# ---- the registry of tables and plots ------------------------------------------------------------

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


def absolute_md(r: Results) -> str:
    return (f"# {ABSOLUTE_TITLE}\n\n" + markdown(r.absolute) + f"\n## {SEARCH_TITLE}\n\n"
            + (markdown(r.search_budget) if not r.search_budget.empty else "No search recorded.\n")
            + "\n" + r.notes + "\n")


def absolute_html(r: Results) -> str:
    return html_page(ABSOLUTE_TITLE, [("", r.absolute), (SEARCH_TITLE, r.search_budget), ("Notes", r.notes)])


def markdown_parts(parts: list[tuple[str, pd.DataFrame | str]]) -> str:
    """Headed tables or paragraphs as markdown (the markdown twin of `html_page`)."""
    return "\n".join(f"## {h}\n\n" + (markdown(p) if isinstance(p, pd.DataFrame) else p + "\n") for h, p in parts)


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
          label: str | None = None, from_summary: bool = False) -> Output:
    """A table: with a `label`, an HTML page among the report's tables; else a data file."""
    category = "1. Tables" if label else "3. Data"
    return Output(path, write, caption, category if caption else "", label and {"table": label}, from_summary)


def plot(name: str, draw: Callable[[Results, Path], None], label: str) -> Output:
    """A figure: plots/NAME.png, drawn by `draw(results, path)`, caption workflow/report/NAME.rst."""
    return Output(f"plots/{name}.png", draw, f"{name}.rst", "2. Figures", {"figure": label})


TABLES = (
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
    plot("accuracy_vs_energy", lambda r, p: plot_accuracy_energy(r.runs, p), "accuracy vs energy"),
    plot("accuracy_vs_cost", lambda r, p: plot_accuracy_cost(r.runs, p), "accuracy vs CPU time"),
    plot("learning_curves", lambda r, p: plot_learning_curves(r.runs, r.curves, p), "learning curves"),
    plot("layer_accuracy", lambda r, p: plot_layer_accuracy(layer_accuracies(r.raw), r.runs, p),
         "per-layer accuracy"),
    plot("to_target", lambda r, p: plot_to_target(r.to_target, r.cfg.target_fraction, p),
         "time and energy to target"),
    plot("energy_components", lambda r, p: plot_energy_components(components(r.raw), p), "energy by component"),
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


# ---- entry point -------------------------------------------------------------------------------

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
