"""Per-epoch cost of CaFo predictor training: cached frozen features vs recomputing the frozen
blocks for every batch (the naive way), on MNIST-shaped data (random 1x28x28 images).

    python bench/cafo_cache.py [--n 4096] [--block 3] [--repeats 3] [--threads 2]

Prints the median seconds per predictor epoch of both ways, the one-off cost of building the
cache, and the speed-up (per epoch, and over a whole stage of --epochs epochs including the cache).
Both ways run the real `CaFo.train_epoch`; the naive one simply has no training cache (the path the
algorithm takes under per-batch augmentation).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fakedata import fake_data

from bpfree.algorithms.cafo import CaFo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="training images")
    ap.add_argument("--block", type=int, default=3, help="which block's predictor (1..3)")
    ap.add_argument("--channels", default="32,128,512")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10, help="stage length for the whole-stage speed-up")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = fake_data(n_train=args.n, n_eval=512)
    meta = data.meta
    arch = {"type": "cnn", "channels": [int(c) for c in args.channels.split(",")]}
    hp = {"batch_size": 128, "lr": 1e-3, "l2": 0.0, "block": "rand", "loss": "ce"}
    algo = CaFo(arch, meta, hp, "cpu")
    stage = algo.stages()[args.block - 1]
    gen = torch.Generator().manual_seed(0)

    t0 = time.perf_counter()
    algo.begin_stage(stage, data, args.epochs)
    once = time.perf_counter() - t0

    def epoch_seconds() -> float:
        t = time.perf_counter()
        float(algo.train_epoch(stage, data, gen))
        return time.perf_counter() - t

    cached = statistics.median(epoch_seconds() for _ in range(args.repeats))
    algo.frozen.feats.pop("train")  # naive: the frozen blocks run for every batch
    naive = statistics.median(epoch_seconds() for _ in range(args.repeats))
    E = args.epochs
    print(f"CaFo predictor {args.block}, channels {arch['channels']}, {args.n} MNIST-shaped images, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"  cached features : {cached:8.3f} s/epoch   (+ {once:.2f} s once to build the train+val cache)")
    print(f"  recompute blocks: {naive:8.3f} s/epoch")
    print(f"  speed-up per epoch: {naive / cached:.1f}x; over a {E}-epoch stage incl. the cache: "
          f"{E * naive / (once + E * cached):.1f}x")


if __name__ == "__main__":
    main()
