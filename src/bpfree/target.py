"""Time and energy to a target accuracy: the first epoch whose validation accuracy reaches a fraction
of bp's test accuracy on the same dataset and architecture, from each run's epochs.csv."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bpfree.compared import REFERENCE

NOT_REACHED = {"reached": False, "epoch": float("nan"), "seconds": float("nan"), "energy_j": float("nan")}


def time_to_target(epochs: pd.DataFrame, target_acc: float) -> tuple[float, float | None, int] | None:
    """First epoch whose validation accuracy reaches `target_acc`: (seconds, joules, epoch) from the
    cumulative per-epoch records of epochs.csv (`elapsed_s`, `cum_energy_j`; older files: the sums
    of `seconds`, `energy_j`); joules None where the run recorded none. None if never reached."""
    cols = set(epochs.columns)
    secs = epochs["elapsed_s"] if "elapsed_s" in cols else epochs["seconds"].cumsum()
    joules = (epochs["cum_energy_j"] if "cum_energy_j" in cols
              else epochs["energy_j"].cumsum() if "energy_j" in cols else None)
    hit = (epochs["val_acc"] >= target_acc).to_numpy().nonzero()[0]
    if len(hit) == 0:
        return None
    i = int(hit[0])
    j = None if joules is None or joules.iloc[i] != joules.iloc[i] else float(joules.iloc[i])
    epoch = int(epochs["epoch"].iloc[i]) if "epoch" in cols else i + 1
    return float(secs.iloc[i]), j, epoch


def to_target(epochs: pd.DataFrame, target_acc: float) -> dict:
    """`time_to_target` as a row of to_target.csv: reached, epoch, seconds, energy_j (NaN where
    the run never reaches the target or recorded no energy)."""
    hit = time_to_target(epochs, target_acc)
    if hit is None:
        return dict(NOT_REACHED)
    seconds, joules, epoch = hit
    return {"reached": True, "epoch": epoch, "seconds": seconds,
            "energy_j": float("nan") if joules is None else joules}


def to_target_table(runs: pd.DataFrame, curves: dict[tuple, pd.DataFrame],
                    fraction: float) -> pd.DataFrame:
    """Per run: target = `fraction` x the mean bp test accuracy on its dataset and architecture
    (NaN target where there is no bp cell), and when it was reached."""
    bp = runs[runs.algorithm == REFERENCE].groupby(["dataset", "architecture"]).test_accuracy.mean()
    rows = []
    for r in runs.itertuples(index=False):
        target = fraction * bp.get((r.dataset, r.architecture), float("nan"))
        curve = curves.get((r.dataset, r.architecture, r.algorithm, r.seed))
        row = {"dataset": r.dataset, "architecture": r.architecture, "algorithm": r.algorithm, "seed": r.seed,
               "target_acc": target}
        if curve is None or not np.isfinite(target):
            row.update(NOT_REACHED)
        else:
            row.update(to_target(curve, target))
        rows.append(row)
    return pd.DataFrame(rows)
