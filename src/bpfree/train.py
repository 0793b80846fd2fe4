"""Final runs: best hyperparameters, one seed, the protocol's stopping rule, the best-validation
checkpoint restored, the test split evaluated once, energy metered over the training phase."""
from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from bpfree import algorithms, alone, checkpoint, hparams, io, overlap, provenance, sources
from bpfree.algorithms.base import Algorithm, accuracy
from bpfree.data import Data, load, warnings
from bpfree.device import resolve_device, set_flush_denormal
from bpfree.engine import Diverged, FitResult, Stopping, fit
from bpfree.errors import FileError
from bpfree.metering import IdleBaseline, Meter, Segments, tensor_mib
from bpfree.progress import Progress
from bpfree.protocol import MeteringConfig

# What a run writes into its folder (their temporary files, left by a kill, are removed at start).
OUTPUTS = ("metrics.json", "epochs.csv", "checkpoint.pt", "power_trace.csv")


@dataclass
class Trained:
    """What the metered training phase leaves: the engine's result, the meter's totals (over every
    process of a resumed run), the power trace rows, and the run's processes (`Segments`: this
    one's number, what the killed ones metered)."""

    fit: FitResult
    measured: dict
    trace: list[dict]
    segments: Segments


def run_final(spec: dict, data_path: str | Path, best_path: str | Path, seed: int, out_dir: str | Path,
              threads: int | None = None, checkpoint_every: float | None = None,
              overlap_dir: str | Path | None = None) -> dict:
    """Train once and write `metrics.json`, `epochs.csv` (and `power_trace.csv` where power is read)
    into `out_dir`. Returns the metrics.
    `checkpoint_every` (seconds, 0 = every epoch; None = off): save `checkpoint.pt` in `out_dir`
    after epochs and resume from it when rerun after a kill; deleted once the results are written.
    `overlap_dir`: the folder where the final runs of one workflow record their windows
    (bpfree.overlap); the metrics then say which other runs shared this run's host (None: not tracked).
    It also keeps the idle baseline of this host and device for the next runs to reuse
    (protocol.metering.idle_reuse_s; None: every run measures its own).
    From its data to its results the run holds the lock of its host (CPU) or GPU (bpfree.alone):
    exclusively where protocol.metering.alone is true, after waiting for the other final runs and
    search workers there to end; shared otherwise."""
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    io.check_outputs(out_dir / f for f in OUTPUTS)  # now, not after the last epoch
    stale = io.remove_stale_tmp(out_dir / f for f in OUTPUTS)
    device = resolve_device(spec["device"])
    metering = MeteringConfig.from_dict(spec["metering"])
    label = f"train {Path(data_path).stem}/{spec['architecture']}/{spec['algorithm']} seed {seed}"
    with alone.Hold(alone.device_key(device), metering.alone, label) as hold:
        return _final_run(spec, data_path, best_path, seed, out_dir, device, hold, metering,
                          stale=stale, checkpoint_every=checkpoint_every, overlap_dir=overlap_dir)


def _final_run(spec: dict, data_path: str | Path, best_path: str | Path, seed: int, out_dir: Path,
               device: torch.device, hold: alone.Hold, metering: MeteringConfig, stale: list[Path],
               checkpoint_every: float | None, overlap_dir: str | Path | None) -> dict:
    """run_final, once its host or device is held (`hold`); `metering`: the spec's, parsed."""
    flushed = set_flush_denormal(spec)
    data = load(data_path, device, spec.get("limit_train"))
    best = io.read_json(best_path, "best.json")
    if not isinstance(best, dict) or not isinstance(best.get("params"), dict):
        raise FileError(f"best.json {best_path} has no `params` mapping; delete it and rerun the search step")
    check_best(best, spec, data.meta["dataset"], best_path)
    cls = algorithms.get(spec["impl"])
    settings = hparams.parse(cls.Settings, best["params"], where=f"{best_path}: params")
    hp = settings.asdict()  # complete: the defaults of unset settings are recorded too
    cell = f"{data.meta['dataset']}/{spec['architecture']}/{spec['algorithm']}"
    log = Progress(f"train {cell} seed={seed}")
    if hold.exclusive:
        log(f"metered alone on {hold.name} (waited {hold.waited_s:.1f} s for the runs there to end)")
    for f in stale:
        log(f"removed {f}, left by an interrupted write")
    for w in warnings(data, hp.get("batch_size"), spec.get("limit_train")):
        log(f"warning: {w}")
    log(f"hyperparameters {hp}; optimiser {settings.optimizer_label()}")
    prov = provenance.collect(spec, device, hyperparameters=hp, seed=seed)  # the code that is about to run
    torch.manual_seed(seed)
    algo = cls(spec["arch"], data.meta, settings, device)
    ckpt = None
    if checkpoint_every is not None:
        run_key = sources.digest([spec, hp, seed, data.meta, torch.__version__, str(device)],
                                 files=sources.files(spec["impl"]))  # another code version: not resumed
        ckpt = checkpoint.Checkpoint(out_dir / "checkpoint.pt", run_key, every_s=checkpoint_every, log=log)
    baseline = None if overlap_dir is None else IdleBaseline(  # this host's and device's, for later runs too
        overlap_dir, hold.key, metering.idle_reuse_s, f"{cell} seed {seed}", hold.exclusive)
    with overlap.Window(overlap_dir, f"{cell} seed {seed}") as window:
        try:
            meter = build_meter(device, metering, log, baseline)
            run = train_metered(algo, data, Stopping(**spec["stopping"]), seed, meter, ckpt, log)
        except Diverged as e:
            raise Diverged(f"{cell} seed {seed} diverged with the hyperparameters of {best_path}: {e}") from None
    if window.overlapped:
        log(f"warning: other metered runs shared this host during the window: {', '.join(window.overlapped)}")
    for why in run.fit.diverged:
        log(f"warning: diverged, {why}: the stage ended there with its best-validation weights (docs/protocol.md)")
    if why := learned_nothing(run.fit, data.n_classes):
        raise Diverged(f"{cell} seed {seed} diverged with the hyperparameters of {best_path}: {why} "
                       "(docs/protocol.md, 'Final runs'); no result is written") from None
    metrics = assemble_metrics(spec, seed, algo, settings, data, run, ckpt, log)
    metrics.update(search_record(best))
    metrics.update(window.record(), **hold.record(), flush_denormal=flushed)
    metrics["provenance"], warning = provenance.finished(prov, spec)
    if warning:
        log(warning)
    write_results(out_dir, run, metrics, ckpt)
    return metrics


def write_results(out_dir: Path, run: Trained, metrics: dict, ckpt: checkpoint.Checkpoint | None) -> None:
    """epochs.csv, the power trace where power was read, then metrics.json (last: its presence means
    the run finished); the checkpoint goes once they are written."""
    io.write_csv(out_dir / "epochs.csv", pd.DataFrame(run.fit.history))
    if run.measured["power_trace"]:
        io.write_csv(out_dir / run.measured["power_trace"], pd.DataFrame(run.trace))
    io.write_json(out_dir / "metrics.json", metrics)
    if ckpt is not None:
        ckpt.delete()


CHANCE_FACTOR = 1.5  # a best validation accuracy at most this many times chance: learned nothing
CHANCE_EPOCHS = 3  # ... after at least this many epochs (a 1-epoch smoke run may still be at chance)


def learned_nothing(res: FitResult, n_classes: int) -> str | None:
    """Why a final run is refused although no epoch raised (docs/protocol.md, "Final runs"): a best
    validation accuracy no better than CHANCE_FACTOR times chance (100 / classes %) after
    CHANCE_EPOCHS epochs or more, or after a stage diverged (engine.fit's "stop": the run kept an
    epoch from before the divergence, which must have learned something). Returns the reason, or None."""
    if not res.history:
        return None
    best = max((r["val_acc"] for r in res.history if math.isfinite(r["train_loss"])), default=0.0)
    if (len(res.history) >= CHANCE_EPOCHS or res.diverged) and best <= CHANCE_FACTOR * 100.0 / n_classes:
        return (f"its best validation accuracy {best:.1f} % is no better than {CHANCE_FACTOR:g} x chance "
                f"({100.0 / n_classes:.1f} %)" + (f" ({'; '.join(res.diverged)})" if res.diverged else ""))
    return None


def check_best(best: dict, spec: dict, dataset: str, path: str | Path) -> None:
    """FileError naming `path` if its search was made for another algorithm, implementation,
    network or dataset than this run's (keys a best.json does not record are not checked)."""
    want = {"algorithm": spec["algorithm"], "impl": spec["impl"], "architecture": spec["architecture"],
            "arch": spec["arch"], "dataset": dataset}
    for k, v in want.items():
        if best.get(k) is not None and best[k] != v:
            raise FileError(f"best.json {path} was made for {k} {best[k]!r}, this run is for {v!r}: give the "
                            "run the best.json of its own search")


def build_meter(device: torch.device, m: MeteringConfig, log: Progress, baseline: IdleBaseline | None = None) -> Meter:
    """The energy meter of a final run, from its `metering` settings; `baseline`: where the idle
    baseline of its host and device is stored and reused from (None: measured by every run)."""
    if m.idle_seconds:
        reuse = f" (or a stored one at most {baseline.max_age_s:g} s old)" if baseline and baseline.max_age_s else ""
        log(f"idle-power baseline: {m.idle_seconds} s{reuse}")
    return Meter(device, country=m.country_iso_code, idle_seconds=m.idle_seconds, sample_hz=m.sample_hz,
                 estimate_interval_s=m.estimate_interval_s, cooldown_s=m.cooldown_s, idle_baseline=baseline)


def train_metered(algo: Algorithm, data: Data, stopping: Stopping, seed: int, meter: Meter,
          ckpt: checkpoint.Checkpoint | None, log: Progress) -> Trained:
    """`engine.fit` inside the meter's window, with the killed processes' time and energy (saved
    with the checkpoint) added after a resume, and every epoch's record given its final marks."""
    # what the processes killed before this one metered, up to their last checkpoint
    state = ckpt.load() if ckpt is not None else None
    segments = Segments(state["extra"] if state is not None else None)
    caps = {s.name: s.epochs or stopping.max_epochs for s in algo.stages()}  # for the progress lines

    def on_epoch(rec: dict) -> None:
        # cheap: final per-epoch joules come from meter.epochs after stop(); a checkpoint due after
        # this epoch keeps this process's provisional marks, in its history and its totals
        mark = meter.mark(refresh=ckpt is not None and ckpt.due())
        rec["segment"] = segments.segment
        if ckpt is not None:
            provisional, ckpt.extra = segments.provisional(mark)
            rec.update(provisional)
        log.epoch(rec, caps[rec["stage"]], stopping.patience)

    # No warm-up of torch._dynamo: the optimisers of bpfree.algorithms.base do not import it (a
    # torch.optim class does, ~1 s, inside the window if an algorithm builds one in begin_stage).
    load_start = os.getloadavg()
    meter.start()
    if meter.idle is not None and meter.idle.reused:
        log(f"idle-power baseline reused: measured {meter.idle.reused['age_s']:.0f} s ago by "
            f"{meter.idle.reused['measured_by']}")
    try:
        res = fit(algo, data, stopping, seed=seed, on_epoch=on_epoch, checkpoint=ckpt, on_divergence="stop",
                  diagnostics=meter.excluded.during)
        measured = meter.stop()
    finally:
        meter.close()
    measured = segments.totals({**measured, **load_record(load_start, res.history)})
    # after a resume the first epochs were metered by the killed processes: this window covers the rest
    for rec, final in zip(res.history[len(res.history) - len(meter.epochs):], segments.final_epochs(meter.epochs)):
        rec.update(final)
    return Trained(res, measured, meter.trace_rows() if measured["power_trace"] else [], segments)


def assemble_metrics(spec: dict, seed: int, algo: Algorithm, settings: hparams.Settings, data: Data, run: Trained,
           ckpt: checkpoint.Checkpoint | None, log: Progress) -> dict:
    """metrics.json of a trained run (its provenance aside): the one test evaluation, the
    algorithm's own `run_metrics`, cost, energy and resume bookkeeping."""
    res, measured, stopping, device = run.fit, run.measured, Stopping(**spec["stopping"]), algo.device
    energy = f"{measured['energy_j']:.1f} J" if measured["energy_j"] is not None else "energy unavailable"
    extra = algo.run_metrics(data)
    test_acc = accuracy(algo.predict(data.x_test), data.y_test)  # the one test evaluation
    log(f"done: test_acc {test_acc:.2f}%  val_acc {res.val_acc:.2f}%  epochs {res.epochs}  "
        f"{measured['train_time_s']:.1f}s  {energy} ({measured['energy_method']})")
    hp = settings.asdict()
    metrics = {
        "dataset": data.meta["dataset"], "architecture": spec["architecture"], "arch": spec["arch"],
        "algorithm": spec["algorithm"],
        "impl": spec["impl"], "locality": algo.locality, "seed": seed, "hyperparameters": hp,
        "optimizer": settings.optimizer_label(),
        "test_accuracy": test_acc, "val_accuracy": res.val_acc,
        "epochs": res.epochs, "best_epoch": res.best_epoch, "epoch_cap": stopping.max_epochs,
        "capped_stages": res.capped_stages,
        "diverged_stages": len(res.diverged), "divergence": "; ".join(res.diverged) or None,
        "patience": stopping.patience, "n_params": algo.n_params(), "n_train": len(data.y_train),
        "train_flops": 2 * res.macs, "predict_flops": 2 * algo.predict_macs(),
        "layer_test_accuracy": algo.layer_accuracies(data.x_test, data.y_test),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "limit_train": spec.get("limit_train"),
        **measured,
    }
    metrics["achieved_gflops"] = metrics["train_flops"] / measured["train_time_s"] / 1e9
    metrics["state_memory_mib"] = tensor_mib(checkpoint.algo_state(algo))  # the finished run's, outside the window
    metrics["state_memory_method"] = ("bytes of the tensors the algorithm keeps (weights, buffers, feedback matrices, "
                                      "optimiser moments: bpfree.checkpoint.algo_state), each storage once")
    metrics["stage_cpu_s"] = dict(res.stage_cpu_s)
    metrics["cpu_time_s"] = sum(res.stage_cpu_s.values())  # process user + system, every thread
    metrics["resumed"], metrics["segments"] = run.segments.resumed, run.segments.segment
    metrics["resume"] = _resume_note(ckpt, run.segments)
    metrics["checkpoint"] = None if ckpt is None else {"saves": ckpt.saves, "seconds": ckpt.seconds,
                                                        "every_s": ckpt.every_s}
    if clash := sorted(set(extra) & {*metrics, "provenance"}):
        raise ValueError(f"{type(algo).__name__}.run_metrics: {', '.join(clash)} would overwrite keys of metrics.json")
    return {**metrics, **extra}


def load_record(start: tuple[float, float, float], history: list[dict]) -> dict:
    """The machine's load over a run: the 1-minute load average read after each epoch (mean and
    max; a value near the core count means other work shared the CPU), and the 1/5/15-minute
    triples at the start and the end of the training phase."""
    per_epoch = [r["load_1m"] for r in history if r.get("load_1m") is not None]
    return {"load_1m_mean": sum(per_epoch) / len(per_epoch) if per_epoch else None,
            "load_1m_max": max(per_epoch, default=None), "load_start": list(start), "load_end": list(os.getloadavg()),
            "cpu_count": os.cpu_count()}


def search_record(best: dict) -> dict:
    """What a final run inherits from its search (best.json): the fidelity its hyperparameters
    were tuned at and the budget as spent, so that the report can tell tiers and fidelities apart."""
    fid = best.get("search_fidelity") or {}
    stop = fid.get("stopping") or {}
    budget = best.get("budget") or {}
    return {"search_limit_train": fid.get("limit_train"), "search_limit_val": fid.get("limit_val"),
            "search_max_epochs": stop.get("max_epochs"),
            "search_patience": stop.get("patience"), "search_n_trials": budget.get("asked", best.get("n_trials")),
            "search_complete": budget.get("complete")}


def _resume_note(ckpt: checkpoint.Checkpoint | None, segments: Segments) -> dict | None:
    if ckpt is None or ckpt.resumed_from is None:
        return None
    return {"from_epoch": ckpt.resumed_from["epoch"],
            "note": "train_time_s, energy_j and their components are totals over all processes: the killed "
                    "ones up to their last checkpoint (provisional per-epoch marks, `metered` in epochs.csv), "
                    "this one in full; epochs redone after a kill are not counted; dynamic energy uses this "
                    "process's idle power; peak memory is this process's",
            "earlier_train_time_s": segments.earlier["train_time_s"], "earlier_energy_j": segments.earlier_energy_j,
            "earlier_window_j": segments.earlier["window_j"]}

