"""Loading finished final runs: their metrics.json files checked (a value no measurement gives is
refused by name), flattened into the per-run summary, and what the plots read beside them
(epochs.csv curves, energy components, per-layer accuracies)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bpfree import io, tiers
from bpfree.errors import FileError
from bpfree.stats import CELL

COLUMNS = ["dataset", "architecture", "algorithm", "locality", "optimizer", "seed", "test_accuracy", "val_accuracy",
           "train_time_s", "epochs", "best_epoch", "resumed", "segments", "energy_j", "energy_dynamic_j",
           "energy_method", "energy_board_j", "energy_board_method", "energy_window_warning", "emissions_kg",
           "peak_memory_mib", "peak_memory_method", "rss_growth_mib", "state_memory_mib", "n_params", "train_flops",
           "predict_flops", "achieved_gflops", "device"]
NON_NEGATIVE = ("train_time_s", "cpu_time_s", "energy_j", "energy_board_j", "peak_memory_mib", "epochs", "train_flops")


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
    `hyperparameters` as `hp_<name>`, and the provenance's `git_commit` and `run_sha256`; and
    `protocol_id`, the study's label: a digest of the keys that define a run's protocol
    (bpfree.tiers.PROTOCOL), the same for every run of one tier and different between tiers."""
    flat = []
    for m in runs:
        prov = m.get("provenance") if isinstance(m.get("provenance"), dict) else {}
        hp = m.get("hyperparameters") if isinstance(m.get("hyperparameters"), dict) else {}
        flat.append({**m, **{f"hp_{k}": v for k, v in hp.items() if not isinstance(v, (dict, list))},
                     "git_commit": prov.get("git_commit"), "run_sha256": prov.get("run_sha256"),
                     "protocol_id": tiers.protocol_id(m)})
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
