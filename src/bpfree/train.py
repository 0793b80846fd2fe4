"""Final runs: best hyperparameters, one seed, the protocol's stopping rule, the best-validation
checkpoint restored, the test split evaluated once, energy metered over the training phase."""
from __future__ import annotations

import platform
from pathlib import Path

import pandas as pd
import torch

from bpfree import algorithms, io
from bpfree.algorithms.base import accuracy
from bpfree.data import load
from bpfree.engine import Stopping, fit
from bpfree.metering import Meter
from bpfree.progress import Progress
from bpfree.search import resolve_device


def run_final(spec: dict, data_path: str | Path, best_path: str | Path, seed: int, out_dir: str | Path,
              threads: int | None = None) -> dict:
    """Train once and write `metrics.json` and `epochs.csv` into `out_dir`. Returns the metrics."""
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    device = resolve_device(spec["device"])
    data = load(data_path, device, spec.get("limit_train"))
    best = io.read_json(best_path)
    hp = best["params"]
    cell = f"{data.meta['dataset']}/{spec['architecture']}/{spec['algorithm']}"
    log = Progress(f"train {cell} seed={seed}")
    log(f"hyperparameters {hp}")
    torch.manual_seed(seed)
    algo = algorithms.get(spec["impl"])(spec["arch"], data.meta, hp, device)
    stopping = Stopping(**spec["stopping"])
    m = spec.get("metering", {})
    meter = Meter(device, country=m.get("country_iso_code", "FRA"), idle_seconds=m.get("idle_seconds", 0),
                  sample_hz=m.get("sample_hz", 10), estimate_interval_s=m.get("estimate_interval_s", 1.0))

    def on_epoch(rec: dict) -> None:
        meter.mark()  # cheap: final per-epoch joules come from meter.epochs after stop()
        log.epoch(rec, stopping.max_epochs)

    if m.get("idle_seconds", 0):
        log(f"idle-power baseline: {m['idle_seconds']} s")
    meter.start()
    try:
        res = fit(algo, data, stopping, seed=seed, on_epoch=on_epoch)
        measured = meter.stop()
    finally:
        meter.close()
    for rec, per_epoch in zip(res.history, meter.epochs):
        rec.update(per_epoch)
    energy = f"{measured['energy_j']:.1f} J" if measured["energy_j"] is not None else "energy unavailable"
    test_acc = accuracy(algo.predict(data.x_test), data.y_test)  # the one test evaluation
    log(f"done: test_acc {test_acc:.2f}%  val_acc {res.val_acc:.2f}%  epochs {res.epochs}  "
        f"{measured['train_time_s']:.1f}s  {energy} ({measured['energy_method']})")
    n_train = len(data.y_train)
    metrics = {
        "dataset": data.meta["dataset"], "architecture": spec["architecture"], "algorithm": spec["algorithm"],
        "impl": spec["impl"], "seed": seed, "hyperparameters": hp,
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
    io.write_csv(out_dir / "epochs.csv", pd.DataFrame(res.history))
    if measured["power_trace"]:
        io.write_csv(out_dir / measured["power_trace"], pd.DataFrame(meter.trace_rows()))
    io.write_json(out_dir / "metrics.json", metrics)  # last: its presence means the run finished
    return metrics
