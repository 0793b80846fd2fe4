"""Paired, interleaved A/B timing of training epochs of two or more implementations of one
algorithm (not a test): is a change to an algorithm's code faster, on a machine whose speed drifts?

    python bench/ab.py --impls mf my.variant.module [--params '{"lr": 0.001}'] [--architecture mlp-2x1000]
                       [--data mnist.pt] [--n-train N] [--batch-size 128] [--threads 2] [--repeats 7]

Every implementation is built with the same settings and seed and driven through the same stages;
per stage, after one warm-up epoch each, `--repeats` rounds time one epoch of each implementation,
the order reversed every other round (ABBA). Printed per stage: the median (and fastest) s/epoch of each, the
median and range over rounds of each one's time over the first's (< 1: faster than the first), and
the ratio of the fastest epochs (the estimate for a quiet machine: other processes only add time).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakedata import data_or_fake  # noqa: E402
from floor import architecture, settings  # noqa: E402

from bpfree import algorithms, hparams  # noqa: E402
from bpfree.algorithms.base import generator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impls", nargs="+", required=True, help="implementations (bpfree impl names or modules)")
    ap.add_argument("--params", default="{}", help="settings (JSON) on top of the first impl's defaults")
    ap.add_argument("--architecture", default="mlp-2x1000")
    ap.add_argument("--data")
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    arch = architecture(a.architecture, {})
    data = data_or_fake(a.data, a.n_train)
    _, params = settings(a.impls[0], {}, a.batch_size, {a.impls[0]: json.loads(a.params)})
    algos = []
    for impl in a.impls:
        cls = algorithms.get(impl)
        torch.manual_seed(0)
        algos.append((cls(arch, data.meta, hparams.parse(cls.Settings, params), torch.device("cpu")),
                      generator(torch.device("cpu"), 0)))
    print(f"{a.impls} {json.dumps(params)} on {a.architecture}, {len(data.y_train)} images, {a.threads} thread(s), "
          f"{a.repeats} rounds")
    for si, stage in enumerate(algos[0][0].stages()):
        for algo, gen in algos:
            algo.begin_stage(algo.stages()[si], data, stage.epochs or 1000)
            float(algo.train_epoch(algo.stages()[si], data, gen))  # warm-up
        times = [[] for _ in algos]
        for r in range(a.repeats):
            order = range(len(algos)) if r % 2 == 0 else reversed(range(len(algos)))
            for k in order:
                algo, gen = algos[k]
                t0 = time.perf_counter()
                float(algo.train_epoch(algo.stages()[si], data, gen))
                times[k].append(time.perf_counter() - t0)
        for k, impl in enumerate(a.impls):
            ratios = [t / t0 for t, t0 in zip(times[k], times[0])]
            print(f"  {stage.name:<8}{impl:<28}{statistics.median(times[k]):8.3f} s/epoch (fastest "
                  f"{min(times[k]):.3f})   to {a.impls[0]}: median {statistics.median(ratios):.3f} "
                  f"[{min(ratios):.3f}, {max(ratios):.3f}], fastest {min(times[k]) / min(times[0]):.3f}", flush=True)
        for algo, _ in algos:
            algo.end_stage(algo.stages()[si], data)


if __name__ == "__main__":
    main()
