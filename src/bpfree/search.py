"""Hyperparameter search: one Optuna study per (dataset, architecture, algorithm), stored in a
journal file (bpfree.journal) so that a killed search resumes with every finished trial kept."""
from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path

import optuna
import torch

from bpfree import algorithms, hparams, io
from bpfree.data import Data, balanced_subset, load, warnings
from bpfree.device import resolve_device, set_flush_denormal
from bpfree.engine import Diverged, Stopping, fit
from bpfree.errors import BpfreeError, FileError
from bpfree.journal import storage
from bpfree.progress import Progress, duration
from bpfree.protocol import SearchConfig


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def sample(trial: optuna.Trial, space: dict) -> dict:
    """Draw one point of a search space from the config."""
    out = {}
    for name, p in space.items():
        kind = p.get("type", "float")
        if kind == "categorical":
            out[name] = trial.suggest_categorical(name, p["choices"])
        elif kind == "int":
            out[name] = trial.suggest_int(name, int(p["low"]), int(p["high"]), step=int(p.get("step", 1)),
                                          log=p.get("log", False))
        else:
            out[name] = trial.suggest_float(name, p["low"], p["high"], log=p.get("log", False),
                                            step=p.get("step"))
    return out


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


def _claim(study: optuna.Study, journal: str | Path, budget: int, owner: str) -> optuna.Trial | None:
    """Start a trial if the study holds fewer than `budget` finished or running trials, else None.

    Counting and creating happen under one lock (beside the journal, NFS-safe like the journal's
    own), so K workers together start exactly `budget` trials. A worker sets its owner tag before
    releasing the lock: an untagged running trial seen under the lock was killed in between."""
    from optuna.storages.journal import JournalFileOpenLock

    lock = JournalFileOpenLock(f"{journal}.slots")
    lock.acquire()
    try:
        fail_stale(study, owners=lambda w: w is None)
        used = len(study.get_trials(deepcopy=False, states=(*FINISHED, optuna.trial.TrialState.RUNNING)))
        if used >= budget:
            return None
        trial = study.ask()
        trial.set_user_attr("worker", owner)
        return trial
    finally:
        lock.release()


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


def trial_data(spec: dict, data: Data) -> Data:
    """What a search trial trains and validates on: the class-balanced subsets of
    protocol.search.limit_train and limit_val (each absent: the whole split)."""
    s = SearchConfig.from_dict(spec["search"])
    for split, n in (("train", s.limit_train), ("val", s.limit_val)):
        if n is not None:
            try:
                data = balanced_subset(data, n, split)
            except ValueError as e:
                raise BpfreeError(str(e)) from None
    return data


def objective(spec: dict, data: Data, device: torch.device, log: Progress):
    cls = algorithms.get(spec["impl"])
    stopping = Stopping(**fidelity(spec)["stopping"])
    seed0 = SearchConfig.from_dict(spec["search"]).sampler_seed

    def run(trial: optuna.Trial) -> float:
        hp = settings(spec, {**spec["fixed"], **sample(trial, spec["space"])})
        torch.manual_seed(seed0 + trial.number)
        algo = cls(spec["arch"], data.meta, hp, device)

        def report(rec: dict) -> None:
            trial.report(rec["val_acc"], rec["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {rec['epoch']} (val_acc {rec['val_acc']:.2f})")

        try:
            res = fit(algo, data, stopping, seed=seed0 + trial.number, on_epoch=report)
        except Diverged as e:
            trial.set_user_attr("diverged", str(e))
            raise optuna.TrialPruned(f"diverged: {e}") from e
        trial.set_user_attr("epochs", res.epochs)
        if not math.isfinite(res.val_acc):
            raise optuna.TrialPruned("validation accuracy is not finite")
        return res.val_acc

    return run


def largest_batch(spec: dict) -> int | None:
    """The largest batch size a search may run: fixed, or the top of its searched range."""
    if "batch_size" in spec["fixed"]:
        return spec["fixed"]["batch_size"]
    p = spec["space"].get("batch_size")
    if p is None:
        return None
    return max(p["choices"]) if p.get("type") == "categorical" else p["high"]


def run_search(spec: dict, data_path: str | Path, journal: str | Path, n_trials: int | None = None,
               threads: int | None = None, exclusive: bool = True, worker: int | None = None,
               workers: int = 1) -> optuna.Study:
    """Run trials until the study holds `n_trials` finished (complete or pruned) trials.
    `n_trials` defaults to the whole budget. `exclusive`: no other worker shares this study, so
    trials left running in the journal were killed and are marked failed before resuming.

    Parallel search: K processes run this with worker = 0..K-1 (workers = K) on one journal. They
    share the budget through `_claim` (no trial is started beyond it). A worker's trials carry its
    index; on (re)start worker k fails the running trials tagged k, or tagged >= K: Snakemake and
    SLURM never run two copies of one worker job, so those were left by a killed process. Optuna's
    heartbeats would do this by clock, but JournalStorage (Optuna 5) does not implement them."""
    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = torch.device(resolve_device(spec["device"]))
    set_flush_denormal(spec)
    data = trial_data(spec, load(data_path, device, spec.get("limit_train")))
    tag = "" if worker is None else f" worker {worker}/{workers}"
    log = Progress(f"search {data.meta['dataset']}/{spec['architecture']}/{spec['algorithm']}{tag}")
    if (fid := fidelity(spec))["reduced"]:
        log(f"search fidelity: {len(data.y_train)} training and {len(data.y_val)} validation images, stopping "
            f"{fid['stopping']} (final runs: the whole splits, protocol.stopping)")
    for w in warnings(data, largest_batch(spec), spec.get("limit_train")):
        log(f"warning: {w}")
    study = make_study(spec, journal, worker, log=log)
    check_identity(study, spec, journal, data.meta["dataset"])
    if n_before := len(study.get_trials(deepcopy=False)):
        # resuming: a sampler seeded as at the start would draw the first trials' points again
        study.sampler = optuna.samplers.TPESampler(
            seed=SearchConfig.from_dict(spec["search"]).sampler_seed + (worker or 0) + 100_003 * n_before)
    budget = spec["search"]["n_trials"] if n_trials is None else n_trials
    owner = _resume(study, journal, budget, exclusive, worker, workers, log)
    fn = objective(spec, data, device, log)
    failures = 0
    while (trial := _claim(study, journal, budget, owner)) is not None:
        try:
            value = fn(trial)
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except torch.OutOfMemoryError as e:  # a failed trial frees its slot: another point is drawn
            trial.set_user_attr("error", str(e)[:500])
            frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
            failures += 1
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        else:
            frozen = study.tell(trial, value)
        _log_trial(study, frozen, budget, log)
        if failures > budget:
            raise BpfreeError(f"{failures} trials failed (out of memory) in this search worker of {journal}; "
                               "reduce the batch size or the architecture")
    return study


def _resume(study: optuna.Study, journal: str | Path, budget: int, exclusive: bool, worker: int | None,
            workers: int, log: Progress) -> str:
    """Fail the trials that killed processes left running (see run_search) and say what is kept;
    returns this process's owner tag for the trials it starts."""
    if worker is None:
        owner = f"{socket.gethostname()}:{os.getpid()}"
        dead = None if exclusive else (lambda w: False)
    else:
        owner = str(worker)
        dead = None if exclusive else (
            lambda w: w is not None and w.isdigit() and (int(w) == worker or int(w) >= workers))
    if stale := fail_stale(study, owners=dead):
        log(f"marked {stale} trial(s) left running by a killed search as failed")
    if done := len(study.get_trials(deepcopy=False, states=FINISHED)):
        log(f"resuming study {journal}: {done} of {budget} trials already finished")
    return owner


def _log_trial(study: optuna.Study, t: optuna.trial.FrozenTrial, budget: int, log: Progress) -> None:
    """One line per trial: its outcome and point, the trials finished of the budget, the best so
    far, and the time left at the finished trials' mean duration (one worker's view)."""
    done = study.get_trials(deepcopy=False, states=FINISHED)
    value = f"{t.value:.2f}%" if t.value is not None else "-"
    best = f"{study.best_value:.2f}%" if any(x.state == optuna.trial.TrialState.COMPLETE for x in done) else "-"
    seconds = [x.duration.total_seconds() for x in done if x.duration is not None]
    left = ""
    if seconds and budget > len(done):
        left = f", ~{duration(sum(seconds) / len(seconds) * (budget - len(done)))} left"
    log(f"trial {t.number} {t.state.name.lower()} val_acc {value} params {json.dumps(t.params)}  "
        f"[{len(done)}/{budget} finished, best {best}{left}]")


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


def settings(spec: dict, params: dict) -> hparams.Settings:
    """The algorithm's typed settings for `params` (ConfigError names a bad one)."""
    return hparams.parse(algorithms.get(spec["impl"]).Settings, params, f"algorithms.{spec['algorithm']}")


def write_outputs(spec: dict, study: optuna.Study | None, best_path: str | Path, trials_path: str | Path,
                  prov: dict, journal: str | Path = "") -> dict:
    """best.json (with `prov`, the provenance collected when the job began) and trials.csv."""
    best = best_params(spec, study, journal)
    s = settings(spec, best["params"])
    fid = fidelity(spec)
    dataset = study.user_attrs.get("dataset") if study is not None else None
    io.write_json(best_path, {**best, "algorithm": spec["algorithm"], "architecture": spec["architecture"],
                              "arch": spec["arch"], "impl": spec["impl"], "dataset": dataset,
                              "settings": s.asdict(), "optimizer": s.optimizer_label(), "search_fidelity": fid,
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
