"""Final runs: best hyperparameters, one seed, the protocol's stopping rule, the best-validation
checkpoint restored, the test split evaluated once, energy metered over the training phase."""
from __future__ import annotations

import platform
from pathlib import Path

import pandas as pd
import torch

from bpfree import algorithms, checkpoint, hparams, io, provenance, sources
from bpfree.algorithms.base import accuracy
from bpfree.data import load, warnings
from bpfree.errors import FileError
from bpfree.engine import Diverged, Stopping, fit
from bpfree.metering import Meter
from bpfree.progress import Progress
from bpfree.search import resolve_device

# What a run writes into its folder (their temporary files, left by a kill, are removed at start).
OUTPUTS = ("metrics.json", "epochs.csv", "checkpoint.pt", "power_trace.csv")


def run_final(spec: dict, data_path: str | Path, best_path: str | Path, seed: int, out_dir: str | Path,
              threads: int | None = None, checkpoint_every: float | None = None) -> dict:
    """Train once and write `metrics.json`, `epochs.csv` (and `power_trace.csv` where power is read)
    into `out_dir`. Returns the metrics.
    `checkpoint_every` (seconds, 0 = every epoch; None = off): save `checkpoint.pt` in `out_dir`
    after epochs and resume from it when rerun after a kill; deleted once the results are written."""
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    io.check_writable(out_dir)  # now, not after the last epoch
    stale = io.remove_stale_tmp(out_dir / f for f in OUTPUTS)
    device = resolve_device(spec["device"])
    data = load(data_path, device, spec.get("limit_train"))
    best = io.read_json(best_path, "best.json")
    if not isinstance(best, dict) or not isinstance(best.get("params"), dict):
        raise FileError(f"best.json {best_path} has no `params` mapping; delete it and rerun the search step")
    cls = algorithms.get(spec["impl"])
    settings = hparams.parse(cls.Settings, best["params"], where=f"{best_path}: params")
    hp = settings.asdict()  # complete: the defaults of unset settings are recorded too
    cell = f"{data.meta['dataset']}/{spec['architecture']}/{spec['algorithm']}"
    log = Progress(f"train {cell} seed={seed}")
    for f in stale:
        log(f"removed {f}, left by an interrupted write")
    for w in warnings(data, hp.get("batch_size"), spec.get("limit_train")):
        log(f"warning: {w}")
    log(f"hyperparameters {hp}; optimiser {settings.optimizer_label()}")
    torch.manual_seed(seed)
    algo = cls(spec["arch"], data.meta, settings, device)
    stopping = Stopping(**spec["stopping"])
    m = spec.get("metering", {})
    meter = Meter(device, country=m.get("country_iso_code", "FRA"), idle_seconds=m.get("idle_seconds", 0),
                  sample_hz=m.get("sample_hz", 10), estimate_interval_s=m.get("estimate_interval_s", 5.0))

    ckpt = None
    if checkpoint_every is not None:
        run_key = checkpoint.key(spec, hp, seed, data.meta, torch.__version__, str(device),
                                 files=sources.files(spec["impl"]))  # another code version: not resumed
        ckpt = checkpoint.Checkpoint(out_dir / "checkpoint.pt", run_key, every_s=checkpoint_every, log=log)
    # what processes killed after a checkpoint metered (provisional per-epoch marks), and this one
    earlier = {"train_time_s": 0.0, "energy_j": 0.0, "segments": 0}
    if ckpt is not None and (state := ckpt.load()) is not None:
        earlier.update(state["extra"])
    segment_j: list[float | None] = [0.0]

    def on_epoch(rec: dict) -> None:
        mark = meter.mark()  # cheap: final per-epoch joules come from meter.epochs after stop()
        if ckpt is not None:  # saved with the next checkpoint
            e = mark["energy_j"]
            segment_j[0] = None if e is None or segment_j[0] is None else segment_j[0] + e
            ckpt.extra = {"train_time_s": earlier["train_time_s"] + mark["elapsed_s"],
                          "energy_j": None if earlier["energy_j"] is None or segment_j[0] is None
                          else earlier["energy_j"] + segment_j[0],
                          "segments": earlier["segments"] + 1}
        log.epoch(rec, caps[rec["stage"]])

    if m.get("idle_seconds", 0):
        log(f"idle-power baseline: {m['idle_seconds']} s")
    # The first fused optimiser of a process imports torch._dynamo (seconds): do it outside the
    # window, since greedy algorithms build their optimisers inside it (in begin_stage).
    torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    caps = {s.name: s.epochs or stopping.max_epochs for s in algo.stages()}  # for the progress lines
    meter.start()
    try:
        res = fit(algo, data, stopping, seed=seed, on_epoch=on_epoch, checkpoint=ckpt)
        measured = meter.stop()
    except Diverged as e:
        raise Diverged(f"{cell} seed {seed} diverged with the hyperparameters of {best_path}: {e}") from None
    finally:
        meter.close()
    # after a resume the first epochs were metered by the killed process: this window covers the rest
    for rec, per_epoch in zip(res.history[len(res.history) - len(meter.epochs):], meter.epochs):
        rec.update(per_epoch)
    energy = f"{measured['energy_j']:.1f} J" if measured["energy_j"] is not None else "energy unavailable"
    test_acc = accuracy(algo.predict(data.x_test), data.y_test)  # the one test evaluation
    log(f"done: test_acc {test_acc:.2f}%  val_acc {res.val_acc:.2f}%  epochs {res.epochs}  "
        f"{measured['train_time_s']:.1f}s  {energy} ({measured['energy_method']})")
    n_train = len(data.y_train)
    metrics = {
        "dataset": data.meta["dataset"], "architecture": spec["architecture"], "algorithm": spec["algorithm"],
        "impl": spec["impl"], "locality": algo.locality, "seed": seed, "hyperparameters": hp,
        "optimizer": settings.optimizer_label(),
        "test_accuracy": test_acc, "val_accuracy": res.val_acc,
        "epochs": res.epochs, "best_epoch": res.best_epoch, "epoch_cap": stopping.max_epochs,
        "patience": stopping.patience, "n_params": algo.n_params(), "n_train": n_train,
        "train_flops": 2 * res.macs, "predict_flops": 2 * algo.predict_macs(),
        "layer_test_accuracy": algo.layer_accuracies(data.x_test, data.y_test),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "limit_train": spec.get("limit_train"),
        **measured,
    }
    metrics["achieved_gflops"] = metrics["train_flops"] / measured["train_time_s"] / 1e9
    metrics["resumed"] = None
    if ckpt is not None and ckpt.resumed_from is not None:
        e, seg = earlier["energy_j"], measured["energy_j"]
        metrics["resumed"] = {
            "from_epoch": ckpt.resumed_from["epoch"], "segments": earlier["segments"] + 1,
            "note": "train_time_s, energy_j and their components cover only the epochs after the resume; "
                    "the earlier_* values are the killed processes' provisional per-epoch marks",
            "earlier_train_time_s": earlier["train_time_s"], "earlier_energy_j": e,
            "total_train_time_s": earlier["train_time_s"] + measured["train_time_s"],
            "total_energy_j": None if e is None or seg is None else e + seg}
    metrics["checkpoint"] = None if ckpt is None else {"saves": ckpt.saves, "seconds": ckpt.seconds,
                                                        "every_s": ckpt.every_s}
    metrics["provenance"] = provenance.collect(spec, device, hyperparameters=hp, seed=seed)
    io.write_csv(out_dir / "epochs.csv", pd.DataFrame(res.history))
    if measured["power_trace"]:
        io.write_csv(out_dir / measured["power_trace"], pd.DataFrame(meter.trace_rows()))
    io.write_json(out_dir / "metrics.json", metrics)  # last: its presence means the run finished
    if ckpt is not None:
        ckpt.delete()
    return metrics
