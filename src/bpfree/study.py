"""An Optuna study's bookkeeping, without torch: open it from its journal (bpfree.journal), check
that the journal is this study's, fail the trials killed processes left running, and, once every
worker has stopped, collect it into best.json and trials.csv. `bpfree search --collect` needs
nothing else, so it does not pay torch's import (about 1 s); running trials is bpfree.search."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import optuna

from bpfree import io
from bpfree.errors import BpfreeError, FileError
from bpfree.journal import storage
from bpfree.protocol import SearchConfig

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class StudyMismatch(FileError):
    """A journal holds the study of another (dataset, architecture, algorithm, space or fidelity)."""


IDENTITY = ("algorithm", "impl", "architecture", "arch", "fixed", "space", "search", "stopping", "limit_train")


def identity(spec: dict) -> dict:
    """What a study is: the parts of its search spec that decide its trials (the device and the
    budget aside: a study may be given more trials)."""
    out = {k: spec.get(k) for k in IDENTITY}
    out["search"] = {k: v for k, v in (spec.get("search") or {}).items() if k not in ("n_trials", "workers")}
    return out


def check_identity(study: optuna.Study, spec: dict, journal: str | Path, dataset: str | None = None) -> None:
    """Record the study's identity (and its dataset, once known) in a fresh journal; refuse, naming
    the journal and the first key that differs, a journal made for anything else. A journal written
    before identities were recorded is accepted as it is."""
    attrs = study.user_attrs
    mine = identity(spec)
    if "identity" not in attrs:
        if not study.get_trials(deepcopy=False):
            study.set_user_attr("identity", mine)
    else:
        theirs = attrs["identity"]
        for k in IDENTITY:
            if json.dumps(theirs.get(k), sort_keys=True) != json.dumps(mine.get(k), sort_keys=True):
                raise StudyMismatch(
                    f"study journal {journal} belongs to another study: its {k} is {json.dumps(theirs.get(k))}, "
                    f"this search's is {json.dumps(mine.get(k))}; give this search its own --journal")
    if dataset is not None:
        if attrs.get("dataset") not in (None, dataset):
            raise StudyMismatch(f"study journal {journal} belongs to a study on {attrs['dataset']}, this search is on "
                                f"{dataset}; give this search its own --journal")
        if "dataset" not in attrs:
            study.set_user_attr("dataset", dataset)


def make_study(spec: dict, journal: str | Path, worker: int | None = None,
               log: Callable[[str], None] | None = None) -> optuna.Study:
    """Create or load the study. Worker k > 0 of a parallel search seeds its sampler with
    sampler_seed + k: equal seeds would make the workers draw the same points."""
    s = SearchConfig.from_dict(spec["search"])
    if s.pruner.type == "median":
        pruner: optuna.pruners.BasePruner = optuna.pruners.MedianPruner(
            n_startup_trials=s.pruner.n_startup_trials, n_warmup_steps=s.pruner.n_warmup_steps)
    else:
        pruner = optuna.pruners.NopPruner()
    sampler = optuna.samplers.TPESampler(seed=s.sampler_seed + (worker or 0))
    return optuna.create_study(study_name="search", storage=storage(journal, log), direction="maximize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def fail_stale(study: optuna.Study, owners: Callable[[str | None], bool] | None = None) -> int:
    """Mark trials left RUNNING by a killed process as FAIL (they do not count towards the budget).
    `owners(worker)` picks the trials (by their `worker` user attribute) known to be dead; None
    picks every running trial: call it so only when no other worker is running on this study."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if owners is None or owners(t.user_attrs.get("worker")):
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            n += 1
    return n


def fidelity(spec: dict) -> dict:
    """The search fidelity of a search spec: the training images of a trial (`limit_train`, None:
    the whole split) and its stopping rule; `reduced` says whether either differs from the final runs'."""
    s = SearchConfig.from_dict(spec["search"])
    stopping = {"min_delta": 0.0, **(s.stopping or spec["stopping"])}
    final = {"min_delta": 0.0, **spec["stopping"]}
    out = {"limit_train": s.limit_train, "stopping": stopping,
           "reduced": s.limit_train is not None or s.limit_val is not None or stopping != final}
    if s.limit_val is not None:  # absent from older records, which had no such setting
        out["limit_val"] = s.limit_val
    return out


def best_params(spec: dict, study: optuna.Study | None, journal: str | Path = "") -> dict:
    """The hyperparameters the final runs use: fixed settings plus the study's best point.
    BpfreeError naming the journal if no trial completed (every one diverged, pruned or failed)."""
    if study is None:
        return {"params": dict(spec["fixed"]), "searched": {}, "value": None, "trial": None, "n_trials": 0}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        trials = study.get_trials(deepcopy=False)
        diverged = sum("diverged" in t.user_attrs for t in trials)
        if trials and diverged == len(trials):
            raise BpfreeError(f"study {journal}: every one of its {diverged} trials diverged (NaN or infinite "
                              "training loss): lower the learning-rate range of the search space")
        raise BpfreeError(f"study {journal}: no trial completed ({diverged} diverged, "
                          f"{len(trials) - diverged} pruned or failed): widen the search space or relax the pruner")
    b = study.best_trial
    counts = {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    return {"params": {**spec["fixed"], **b.params}, "searched": b.params, "value": b.value,
            "trial": b.number, "n_trials": len(study.get_trials(deepcopy=False, states=FINISHED)),
            "trial_states": counts, "budget": spent(spec, study)}


def spent(spec: dict, study: optuna.Study) -> dict:
    """The budget as spent: trials asked for, complete, pruned and failed, and the epochs they
    trained (a trial's reported epochs; a pruned trial counts the epochs it ran before the cut)."""
    trials = study.get_trials(deepcopy=False)
    state = optuna.trial.TrialState
    return {"asked": spec["search"]["n_trials"],
            **{k: sum(t.state == s for t in trials) for k, s in
               (("complete", state.COMPLETE), ("pruned", state.PRUNED), ("failed", state.FAIL))},
            "epochs": sum(len(t.intermediate_values) for t in trials),
            "epochs_complete": sum(len(t.intermediate_values) for t in trials if t.state == state.COMPLETE)}


def write_outputs(spec: dict, study: optuna.Study | None, best_path: str | Path, trials_path: str | Path,
                  prov: dict, journal: str | Path = "") -> dict:
    """best.json (with `prov`, the provenance collected when the job began) and trials.csv."""
    best = best_params(spec, study, journal)
    fid = fidelity(spec)
    dataset = study.user_attrs.get("dataset") if study is not None else None
    io.write_json(best_path, {**best, "algorithm": spec["algorithm"], "architecture": spec["architecture"],
                              "arch": spec["arch"], "impl": spec["impl"], "dataset": dataset,
                              "search_fidelity": fid,
                              "provenance": {**prov, "search_fidelity": fid}})
    df = None
    if study is not None:
        df = study.trials_dataframe()
        df["epochs_trained"] = [len(t.intermediate_values) for t in study.get_trials(deepcopy=False)]
        df["fidelity_limit_train"] = fid["limit_train"]
        df["fidelity_limit_val"] = fid.get("limit_val")
        df["fidelity_max_epochs"] = fid["stopping"]["max_epochs"]
        df["fidelity_patience"] = fid["stopping"]["patience"]
    io.write_csv(trials_path, df)
    return best


def worker_summary(study: optuna.Study, worker: int, workers: int) -> dict:
    """What one worker of a parallel search contributed (its job's output)."""
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == str(worker)]
    return {"worker": worker, "workers": workers,
            "finished_trials": sorted(t.number for t in mine if t.state in FINISHED),
            "failed_trials": sorted(t.number for t in mine if t.state == optuna.trial.TrialState.FAIL),
            "study_finished": len(study.get_trials(deepcopy=False, states=FINISHED))}


def check_worker_file(path: str | Path) -> dict:
    """A search worker's summary (its job's output), or FileError naming the file."""
    summary = io.read_json(path, "search worker file")
    missing = [k for k in ("worker", "workers", "finished_trials", "provenance") if k not in summary]
    if missing:
        raise FileError(f"search worker file {path} lacks {', '.join(missing)}; delete it and rerun its worker "
                        "(the study resumes)")
    return summary


def collect(spec: dict, journal: str | Path) -> optuna.Study:
    """The finished study, after every worker has stopped: trials still running belong to killed
    workers and are marked failed. Fails if the study holds fewer finished trials than its budget."""
    if not Path(journal).exists():
        raise FileError(f"no study journal at {journal}: run the search workers first")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = make_study(spec, journal)
    check_identity(study, spec, journal)
    fail_stale(study)
    budget = spec["search"]["n_trials"]
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if done < budget:
        raise BpfreeError(f"study {journal} holds {done} finished trials, its budget is {budget}: a worker "
                           f"stopped early; delete {Path(journal).parent / 'workers'} and run the workflow again "
                           "(the study resumes)")
    return study
