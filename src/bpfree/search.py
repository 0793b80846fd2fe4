"""Hyperparameter search: one Optuna study per (dataset, architecture, algorithm), stored in a
journal file (bpfree.journal) so that a killed search resumes with every finished trial kept.
This module runs trials; the study's bookkeeping and its collection are bpfree.study (no torch)."""
from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import optuna
import torch

from bpfree import algorithms, hparams
from bpfree.data import Data, balanced_subset, load, warnings
from bpfree.device import resolve_device, set_flush_denormal
from bpfree.engine import Diverged, Stopping, fit
from bpfree.errors import BpfreeError
from bpfree.progress import Progress, duration
from bpfree.protocol import SearchConfig
from bpfree.study import FINISHED, check_identity, fail_stale, fidelity, make_study


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


def settings(spec: dict, params: dict) -> hparams.Settings:
    """The algorithm's typed settings for `params` (ConfigError names a bad one)."""
    return hparams.parse(algorithms.get(spec["impl"]).Settings, params, f"algorithms.{spec['algorithm']}")
