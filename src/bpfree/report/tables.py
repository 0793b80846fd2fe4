"""The tables for readers: the absolute table (ours beside the published values), the delta table
in the published layout with each published claim checked, and the verdicts at the margins."""
from __future__ import annotations

import fnmatch
import math

import pandas as pd

from bpfree import published, stats
from bpfree.compared import BY_NAME, COMPARED, delta_format, symbol
from bpfree.report.formatting import DASH, _num, fmt_delta, fmt_mean_sd, verdict
from bpfree.report.load import _methods
from bpfree.stats import CELL, REFERENCE

PUBLISHED_ENERGY = ("GPU board power polled at 5 Hz, trapezoid-integrated, no idle subtraction (the original "
                    "study's code; see published/PROVENANCE.md)")
BOARD = "GPU board energy (J), the original study's method"
LATER = {"camera-ready": "camera-ready (PPAM 2026)", "mf-v2": "Mono-Forward paper v2 (May 2026)"}


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

        def ours(m: str, fmt: str) -> str:
            return _ours(cell, m, fmt)

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
            "RSS growth in training (MiB)": ours("rss_growth_mib", ".0f"),
            "state tensors (MiB)": ours("state_memory_mib", ".1f"),
            "published memory (MiB)": theirs("peak_mem_mib", ".0f"),
            "epochs": ours("epochs", ".1f"), "published epochs": theirs("epochs", ".1f"),
            "resumed runs": f"{_n_resumed(g)} of {len(g)}",
            "its authors' figure (%), their network": _field_reference(field, c.algorithm, g, c.dataset),
        })
    return pd.DataFrame(rows)


def _ours(cell: dict, metric: str, fmt: str) -> str:
    """A cell's "mean ± sd (n=k)" of `metric`, from the n, mean and sd stats.cell_summary made."""
    m = metric
    return fmt_mean_sd(cell[f"{m}_n"], cell[f"{m}_mean"], cell[f"{m}_sd"], fmt) if f"{m}_n" in cell else DASH


def main_table(cells: pd.DataFrame, dl: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The report's first table, narrow enough for its opening page: per cell, the test accuracy,
    its paired delta against bp with the verdict at the declared margin, and the training time and
    energy (the energy method in the column's name)."""
    acc = {tuple(r[k] for k in CELL): r for r in dl[dl.metric == "test_accuracy"].to_dict("records")}
    rows = []
    for cell in cells.to_dict("records"):
        d, ref = acc.get(tuple(cell[k] for k in CELL)), cell["algorithm"] == REFERENCE
        rows.append({**{k: cell[k] for k in CELL}, "test accuracy (%)": _ours(cell, "test_accuracy", ".2f"),
                     "vs bp": "the reference" if ref else fmt_delta(d),
                     "verdict at the margin": d["verdict"] if not ref and d and isinstance(d["verdict"], str)
                     and d["verdict"] else DASH,
                     "train time (s)": _ours(cell, "train_time_s", ".1f"),
                     f"energy (J, {_methods(runs)})": _ours(cell, "energy_j", ".1f")})
    return pd.DataFrame(rows)


BESIDE = ("test accuracy (%)", "published accuracy (%)", "train time (s)", "published time (s)", "energy (J)",
          "energy method", "published energy (J)", "peak memory (MiB)", "published memory (MiB)", "epochs",
          "published epochs")  # the absolute table's first part: ours beside the published values


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
               "locality": _locality(runs[runs.algorithm == alg]),
               "n pairs": max((r["n_pairs"] for r in by_metric.values()), default=0)}
        for metric in (c for c in COMPARED if c.in_table):
            m, col, label = metric.name, metric.published, metric.label
            if col is None and not _has_estimate(by_metric.get(m)):
                continue
            row[f"{label} ours [{ci}]"] = fmt_delta(by_metric.get(m))
            if col:
                pv = float(p[col]) if p is not None else float("nan")
                row[f"{label} published"] = _num(pv, "+.2f")
                if p is not None:
                    ours = _like_with_like(by_metric, m)
                    why = _incomparable(m, ours, runs[runs.algorithm == alg])
                    claims.append({"source": "original (published table)", "dataset": d, "architecture": a,
                                   "variant": alg, "metric": _metric_label(ours, m), "condition": "",
                                   "published": f"{pv:+.2f}", f"ours [{ci}]": fmt_delta(ours),
                                   "against 0 (sign)": DASH if why else verdict(ours, pv),
                                   **margin_verdict(ours, pv, pv, not_comparable=why)})
        for c in _later_claims(claims_pub, d, a, alg):
            ours = _like_with_like(by_metric, c.metric)
            stated = c.text if c.stated != "difference" else (
                f"{c.low:+g}" if c.low == c.high else f"{c.low:+g} to {c.high:+g}")
            why = _incomparable(c.metric, ours, runs[runs.algorithm == alg])
            claims.append({"source": LATER.get(c.source, c.source), "dataset": d, "architecture": a, "variant": alg,
                           "metric": _metric_label(ours, c.metric),
                           "condition": c.condition if isinstance(c.condition, str) else "", "published": stated,
                           f"ours [{ci}]": fmt_delta(ours), "against 0 (sign)": DASH,
                           **margin_verdict(ours, c.low, c.high, c.stated, not_comparable=why)})
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
    other = BY_NAME[metric].claimed_by if metric in BY_NAME else None
    if other is not None and _has_estimate(by_metric.get(other)):
        return by_metric[other]
    return by_metric.get(metric)


def _metric_label(ours: dict | None, metric: str) -> str:
    if ours is None:
        return metric
    compared = BY_NAME.get(ours["metric"])
    unlike = compared is not None and compared.claimed_by is not None  # held against itself: its like was missing
    return ours["metric"] + (" (not the study's quantity: see the notes)" if unlike else "")


def _matches(value: str, pattern: str) -> bool:
    """A published pattern names its cells: shell-style (`*`), and `X-*` (a family's variants)
    names the family's own `X` too: the camera-ready's `ff-*` holds for the default `ff`."""
    return fnmatch.fnmatchcase(value, pattern) or (pattern.endswith("-*") and value == pattern[:-2])


def _later_claims(claims_pub: pd.DataFrame | None, d: str, a: str, alg: str) -> list:
    if claims_pub is None:
        return []
    return [c for c in claims_pub.itertuples(index=False)
            if all(_matches(v, pat) for v, pat in ((d, c.dataset), (a, c.architecture), (alg, c.variant)))]


def _incomparable(metric: str, ours: dict | None, cell: pd.DataFrame) -> str | None:
    """Why a published energy figure (a measurement on an A100 GPU) cannot be held against this
    cell's runs, or None when it can: our figure is the GPU board energy (the study's quantity), or a
    counter's energy of runs on a GPU. Other metrics are compared wherever the cell matches."""
    if not metric.startswith("energy") or ours is None or ours["metric"] == "energy_board_j":
        return None
    methods = _methods(cell)
    devices = sorted(set(cell.device.dropna().astype(str))) if "device" in cell else []
    if methods in ("", "?") or "estimate" in methods:
        what = methods if methods not in ("", "?") else "unrecorded"
        return f"ours is {what} energy, the claim a measurement on an A100 GPU"
    if not any("cuda" in d or "gpu" in d.lower() for d in devices):
        return f"ours was measured on {', '.join(devices) or 'an unrecorded device'}, the claim on an A100 GPU"
    return None


def margin_verdict(ours: dict | None, low: float, high: float, stated: str = "difference",
                   not_comparable: str | None = None) -> dict:
    """A published claim and our delta, each classified at our margin for that metric; whether they
    agree. `low`-`high`: the claimed delta (one value: low = high) in pp or %. `not_comparable`: why
    the claim's conditions differ from ours (then no agreement is stated)."""
    out = {"published at the margin": DASH, "ours at the margin": DASH, "agreement": DASH}
    if not_comparable:
        out["agreement"] = f"not comparable here: {not_comparable}"
        return out
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
        unit, fmt = symbol(r.unit), delta_format(r.unit)
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
