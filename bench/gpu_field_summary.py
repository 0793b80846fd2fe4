"""The table of bench/gpu_field.sh: per slot count (search workers sharing one GPU), the wall time,
trials and worker jobs per hour, seconds per epoch, GPU utilisation, power and memory.

    python bench/gpu_field_summary.py OUT/slots1 OUT/slots2 OUT/slots4

Each folder holds `slots` (the count), `wall_s` (the arm's wall time), the workers' journals
`w<k>.journal` and, on a GPU, `smi.csv` (nvidia-smi samples: utilisation %, power W, memory MiB,
no header). Runs on the CPU (tests/test_bench.py)."""
from __future__ import annotations

import sys
from pathlib import Path
from statistics import mean, median

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    """The finished (complete or pruned) trials of one worker's study."""
    backend = JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal)))
    study = optuna.load_study(study_name="search", storage=optuna.storages.JournalStorage(backend))
    return [t for t in study.get_trials(deepcopy=False) if t.state in DONE]


def smi(path: Path) -> dict:
    """Mean utilisation (%), mean power (W) and max memory (MiB) of nvidia-smi's samples; None each
    without samples (a CPU run)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append([float(v) for v in line.split(",")[:3]])
            except ValueError:  # "[N/A]" or a line cut off when sampling stopped
                continue
    if not rows:
        return {"gpu_util_pct": None, "power_w": None, "memory_mib": None}
    return {"gpu_util_pct": mean(r[0] for r in rows), "power_w": mean(r[1] for r in rows),
            "memory_mib": max(r[2] for r in rows)}


def arm(folder: Path) -> dict:
    """One slot count's figures."""
    wall = float((folder / "wall_s").read_text())
    journals = sorted(folder.glob("w*.journal"))
    done = [t for j in journals for t in trials(j)]
    per_epoch = [t.duration.total_seconds() / e for t in done
                 if t.duration is not None and (e := t.user_attrs.get("epochs") or len(t.intermediate_values))]
    return {"slots": int((folder / "slots").read_text()), "wall_s": wall, "trials": len(done),
            "trials_per_h": 3600 * len(done) / wall, "workers_per_h": 3600 * len(journals) / wall,
            "s_per_epoch": median(per_epoch) if per_epoch else None, **smi(folder / "smi.csv")}


def table(rows: list[dict]) -> str:
    """Markdown, with each slot count's trials per hour relative to one worker per GPU."""
    base = next((r["trials_per_h"] for r in rows if r["slots"] == 1), None)

    def f(v, fmt=".1f"):
        return "n/a" if v is None else format(v, fmt)

    out = ["| workers on the GPU | wall s | trials | trials/h | vs 1 | worker jobs/h | s/epoch (median) | "
           "GPU util % | power W | memory MiB |", "|" + " --- |" * 10]
    for r in rows:
        gain = f(r["trials_per_h"] / base, ".2f") + "x" if base else "n/a"
        out.append(f"| {r['slots']} | {f(r['wall_s'])} | {r['trials']} | {f(r['trials_per_h'])} | {gain} | "
                   f"{f(r['workers_per_h'])} | {f(r['s_per_epoch'], '.3f')} | {f(r['gpu_util_pct'])} | "
                   f"{f(r['power_w'])} | {f(r['memory_mib'], '.0f')} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table([arm(Path(a)) for a in sys.argv[1:]]))
