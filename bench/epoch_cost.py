"""Seconds per training epoch of each algorithm of a config, per stage, at a chosen training-set
size: the measured input of a tier's cost estimate (config/field-tier*.yaml headers, docs/field.md).

    python bench/epoch_cost.py --config config/field-tier2.yaml --n-train 1000 [--threads 1] \
        [--architectures cnn-3block ...] [--algorithms bp ...] [--data mnist.pt]

For every (architecture, algorithm) of the config's comparisons it builds the algorithm with its
fixed settings and the middle of each searched range (bench/floor.py's rule), then trains one epoch
of each stage on `--n-train` images (random MNIST-shaped tensors unless `--data`) and validates on
`--n-eval`, and prints seconds per stage epoch and per 1,000 training images, the CPU seconds beside
them and the load average. A stage with a fixed number of epochs (cafo's DFA phase) is timed once.
An epoch's cost grows linearly with the images it trains on, so scale by the tier's subset.
Timings on a shared machine are upper bounds: read the load column.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakedata import data_or_fake  # noqa: E402
from floor import settings  # noqa: E402

from bpfree import algorithms, config  # noqa: E402
from bpfree.algorithms.base import generator  # noqa: E402


def time_stages(impl: str, params: dict, arch: dict, data, n_eval_note: str) -> list[dict]:
    cls = algorithms.get(impl)
    torch.manual_seed(0)
    algo = cls(arch, data.meta, params, torch.device("cpu"))
    gen = generator(algo.device, 0)
    rows = []
    for stage in algo.stages():
        s0, d0 = time.perf_counter(), time.process_time()
        algo.begin_stage(stage, data, stage.epochs or 1)  # e.g. cafo's and mf's frozen-feature cache
        t0, c0 = time.perf_counter(), time.process_time()
        algo.train_epoch(stage, data, gen)
        t1, c1 = time.perf_counter(), time.process_time()
        algo.validate(stage, data)
        t2, c2 = time.perf_counter(), time.process_time()
        algo.end_stage(stage, data)
        rows.append({"stage": stage.name, "fixed_epochs": stage.epochs, "setup_s": t0 - s0, "setup_cpu_s": c0 - d0,
                     "train_s": t1 - t0, "cpu_s": c1 - c0, "val_s": t2 - t1, "val_cpu_s": c2 - c1,
                     "load_1m": os.getloadavg()[0]})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--architectures", nargs="*")
    p.add_argument("--algorithms", nargs="*")
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--data", help="a prepared data set (default: random MNIST-shaped tensors)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", help="also write the rows to this CSV (what docs/field.md's estimates read)")
    a = p.parse_args(argv)
    rows = []
    torch.set_num_threads(a.threads)
    cfg = yaml.safe_load(Path(a.config).read_text())
    data = data_or_fake(a.data, a.n_train, n_eval=a.n_eval)
    if a.data:
        data.x_val, data.y_val = data.x_val[:a.n_eval], data.y_val[:a.n_eval]
    print(f"# {a.n_train} training and {a.n_eval} validation images, {a.threads} thread(s), torch "
          f"{torch.__version__}, load {os.getloadavg()}")
    print("architecture | algorithm | stage | set-up s (CPU s) | train s/epoch (CPU s) | CPU s per 1,000 train "
          "images | validation s (CPU s) | load 1m")
    for _, arch_name, algo in config.cells({**cfg, "datasets": ["any"]}):
        if (a.architectures and arch_name not in a.architectures) or (a.algorithms and algo not in a.algorithms):
            continue
        impl, params = settings(algo, cfg, None, {})
        for r in time_stages(impl, params, cfg["architectures"][arch_name], data, str(a.n_eval)):
            rows.append({"architecture": arch_name, "algorithm": algo, **r, "n_train": a.n_train, "n_eval": a.n_eval,
                         "threads": a.threads, "cpu_s_per_1000_train": 1000 * r["cpu_s"] / a.n_train,
                         "val_cpu_s_per_1000": 1000 * r["val_cpu_s"] / a.n_eval,
                         "setup_cpu_s_per_1000": 1000 * r["setup_cpu_s"] / (a.n_train + a.n_eval)})
            print(f"{arch_name} | {algo} | {r['stage']}{' (fixed)' if r['fixed_epochs'] else ''} | "
                  f"{r['setup_s']:.2f} ({r['setup_cpu_s']:.2f}) | {r['train_s']:.2f} ({r['cpu_s']:.2f}) | "
                  f"{1000 * r['cpu_s'] / a.n_train:.2f} | {r['val_s']:.2f} ({r['val_cpu_s']:.2f}) | {r['load_1m']:.2f}",
                  flush=True)
    if a.csv:
        import pandas as pd
        pd.DataFrame(rows).to_csv(a.csv, index=False)


if __name__ == "__main__":
    main()
