"""Tiers that never mix. A cell is (dataset, architecture, algorithm) *and* the protocol that made
it: the final runs' training split and stopping rule, the search's fidelity and budget, the
network's shape. Runs made under two protocols, or on two networks that share a name, are refused
together in one report, by name and file: averaging them, or comparing one with the other, would
give a number that no protocol produced. Also the search budget as it was spent, per search."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd

from bpfree import io
from bpfree.errors import FileError

CELL = ["dataset", "architecture", "algorithm"]
# metrics.json keys that define a run's protocol, with what they mean (the refusal says it)
PROTOCOL = {
    "epoch_cap": "the final runs' epoch cap", "patience": "the final runs' patience",
    "flush_denormal": "flush_denormal (subnormal floats flushed to zero: it changes time on a CPU)",
    "limit_train": "limit_train (the final runs' training subset)", "n_train": "the training images of the final runs",
    "search_limit_train": "the search's training subset", "search_limit_val": "the search's validation subset",
    "search_max_epochs": "the search trials' epoch cap",
    "search_patience": "the search trials' patience", "search_n_trials": "the search budget (trials)",
    "metered_alone": "metered_alone (final runs held their host or GPU alone: it changes their time)",
}


# the value a key has in runs made before it was recorded
UNRECORDED = {"metered_alone": False}  # runs before alone runs existed shared their host as others may


class TierError(FileError):
    """Runs of different protocols, or of different networks under one name, were given to one report."""


def _value(v) -> object:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def _files(runs: list[dict], limit: int = 2) -> str:
    paths = [r["_path"] for r in runs]
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _split(runs: list[dict], key) -> dict:
    groups: dict = {}
    for r in runs:
        groups.setdefault(key(r), []).append(r)
    return groups


def arch_key(run: dict) -> str | None:
    """The network's shape as recorded (`arch`, the architecture's spec), canonical; None if not recorded."""
    arch = run.get("arch")
    return None if arch is None else json.dumps(arch, sort_keys=True)


def check(runs: list[dict]) -> None:
    """TierError if the runs of one cell, or of one (dataset, architecture) comparison, differ in a
    key of PROTOCOL, or if one architecture name stands for two shapes (the recorded `arch`; within
    a cell also `n_params`). The message names the key, the values and files of each."""
    comparisons = _split(runs, lambda r: (r["dataset"], r["architecture"]))
    for (d, a), group in sorted(comparisons.items()):
        where = f"{d}/{a}"
        cells = sorted(_split(group, lambda r: r["algorithm"]).items())
        for key, what in PROTOCOL.items():  # a cell that mixes is named before the comparison it spoils
            for alg, cell in cells:
                _refuse_mixed(f"cell {where}/{alg}", cell, key, what)
            _refuse_mixed(f"comparison {where}", group, key, what)
        shapes = _split([r for r in group if arch_key(r) is not None], arch_key)
        if len(shapes) > 1:
            raise TierError(f"architecture {a!r} names {len(shapes)} different networks on {d}: "
                            + "; ".join(f"{k} in {_files(rs)}" for k, rs in shapes.items())
                            + ". Give each network its own name")
        for alg, cell in cells:
            sizes = _split(cell, lambda r: _value(r.get("n_params")))
            if len(sizes) > 1:
                raise TierError(f"architecture {a!r} names networks of different sizes in cell {where}/{alg}: "
                                + "; ".join(f"{v} parameters in {_files(rs)}" for v, rs in sizes.items())
                                + ". Give each network its own name")


def _protocol_value(run: dict, key: str) -> object:
    return _value(run.get(key, UNRECORDED.get(key)))


def protocol_id(run: dict) -> str:
    """A short label of the run's protocol (its values of PROTOCOL's keys): runs of one tier share
    it, two tiers' differ, so concatenated summaries stay apart."""
    values = json.dumps({k: _protocol_value(run, k) for k in PROTOCOL}, sort_keys=True, default=str)
    return hashlib.sha256(values.encode()).hexdigest()[:8]


def _refuse_mixed(scope: str, runs: list[dict], key: str, what: str) -> None:
    by = _split(runs, lambda r: _protocol_value(r, key))
    if len(by) > 1:
        raise TierError(f"{scope} mixes runs of different protocols: {what} ({key}) is "
                        + "; ".join(f"{v} in {_files(rs)}" for v, rs in by.items())
                        + ". Report each protocol (tier) separately")


def best_file(run: dict) -> Path | None:
    """The best.json of a run's search, in the workflow's layout (results/runs/D/A/X/seedN/metrics.json
    -> results/search/D/A/X/best.json); None where the run does not sit in that layout."""
    p = Path(run["_path"])
    if len(p.parents) < 6 or p.parents[4].name != "runs":
        return None
    return p.parents[5] / "search" / p.parents[3].name / p.parents[2].name / p.parents[1].name / "best.json"


def _shown(path: Path) -> str:
    """`path` as a report shows it: relative to the working directory when under it, so that a
    report rebuilt in another clone reads the same."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def search_budget(runs: list[dict]) -> pd.DataFrame:
    """One row per searched cell: the budget asked, the trials complete, pruned and failed and the
    epochs they trained (from the search's best.json where it lies beside the runs, else what the
    runs recorded), and the fidelity the search ran at."""
    rows = []
    for key, cell in sorted(_split(runs, lambda r: tuple(r[k] for k in CELL)).items()):
        r0 = cell[0]
        best, src = {}, "not recorded"
        f = best_file(r0)
        if f is not None and f.exists():
            try:
                best, src = io.read_json(f, "best.json"), _shown(f)
            except FileError:
                best, src = {}, f"{_shown(f)} unreadable"
        budget = best.get("budget") or {}
        states = best.get("trial_states") or {}
        fid = best.get("search_fidelity") or {}
        stop = fid.get("stopping") or {}

        def pick(*values):
            return next((v for v in values if _value(v) is not None), None)
        n_train = pick(fid.get("limit_train"), r0.get("search_limit_train"))
        rows.append({
            **dict(zip(CELL, key)),
            "trials asked": pick(budget.get("asked"), r0.get("search_n_trials")),
            "complete": pick(budget.get("complete"), states.get("complete"), r0.get("search_complete")),
            "pruned": pick(budget.get("pruned"), states.get("pruned")),
            "failed": pick(budget.get("failed"), states.get("fail")),
            "epochs trained": budget.get("epochs"),
            "training images": "all" if n_train is None and (fid or r0.get("search_max_epochs") is not None)
            else n_train,
            "validation images": pick(fid.get("limit_val"), r0.get("search_limit_val")) or "all",
            "epoch cap": pick(stop.get("max_epochs"), r0.get("search_max_epochs")),
            "patience": pick(stop.get("patience"), r0.get("search_patience")),
            "source": src if best else ("the runs' metrics.json" if r0.get("search_n_trials") is not None else src),
        })
    return pd.DataFrame(rows)


def fidelity_note(budget: pd.DataFrame) -> list[str]:
    """Plain lines for the report's notes: at what fidelity each cell was tuned, and where a
    pruner left few complete trials."""
    out = []
    if budget.empty:
        return out
    known = budget.dropna(subset=["epoch cap"])
    for (imgs, val, cap, pat), g in known.groupby(["training images", "validation images", "epoch cap", "patience"],
                                                  dropna=False):
        names = ", ".join("/".join(r) for r in g[CELL].itertuples(index=False, name=None))
        imgs = "the whole training split" if imgs in (None, "all") or imgs != imgs else f"{int(imgs):,} training images"
        val = "" if val in (None, "all") or val != val else f", ranked on {int(val):,} validation images"
        out.append(f"Search fidelity: {names} tuned on {imgs}{val}, at most {int(cap)} epochs per stage, patience "
                   f"{int(pat)} (final runs: their own split and stopping rule, in the tables).")
    few = budget[(budget["complete"].notna()) & (budget["trials asked"].notna())
                 & (budget["complete"] < budget["trials asked"] / 2)]
    for r in few.to_dict("records"):
        pruned, failed = (("?" if _value(r[k]) is None else f"{r[k]:.0f}") for k in ("pruned", "failed"))
        out.append(f"Search budget: {r['dataset']}/{r['architecture']}/{r['algorithm']} completed {r['complete']:.0f} "
                   f"of {r['trials asked']:.0f} trials asked ({pruned} pruned, {failed} failed): its effective "
                   "budget is smaller than the one asked.")
    return out
