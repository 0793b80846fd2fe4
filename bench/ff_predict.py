"""Per-epoch cost of Forward-Forward validation: fast (one unlabelled pass of layer 1 plus C column
additions) against naive (C full labelled passes), on MNIST-shaped data.

    python bench/ff_predict.py [--data resources/data/mnist.pt] [--n 10000] [--widths 1000 1000 1000]
                               [--repeats 5] [--threads 1]

Without --data, random N(0, 1) images of shape 1x28x28 are used (the cost does not depend on the
values). Prints the median seconds per validation pass of each way and the speed-up, and checks
that both give the same predictions.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fakedata import data_or_fake

from bpfree.algorithms.base import chunked
from bpfree.algorithms.ff import ForwardForward


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out, times = fn(), []  # one warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="prepared MNIST (bpfree prepare); validation split used")
    p.add_argument("--n", type=int, default=10_000, help="validation images (MNIST's split: 10000)")
    p.add_argument("--widths", type=int, nargs="+", default=[1000, 1000, 1000])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d = data_or_fake(a.data, 1, n_eval=a.n)
    x, meta = d.x_val[:a.n], d.meta
    algo = ForwardForward({"type": "mlp", "widths": a.widths}, meta, {"lr": 1e-3, "batch_size": 100}, "cpu")
    algo.net.eval()
    size = algo._chunk()
    fast_s, fast = timed(lambda: chunked(algo.goodness, x, size), a.repeats)
    naive_s, naive = timed(lambda: chunked(algo.goodness_naive, x, size), a.repeats)
    same = torch.equal(fast[:, :, 1:].sum(2).argmax(1), naive[:, :, 1:].sum(2).argmax(1))
    err = (fast - naive).abs().max().item() / naive.abs().max().item()
    src = a.data or "random MNIST-shaped"
    print(f"FF validation, {len(x)} images ({src}), widths {a.widths}, {a.threads} thread(s), "
          f"median of {a.repeats}")
    w, C = algo.widths, algo.n_classes
    naive_macs = C * sum(w[i] * w[i + 1] for i in range(algo.L))
    print(f"  naive (C full passes):            {naive_s:8.3f} s per validation pass")
    print(f"  fast (layer 1 once + C columns):  {fast_s:8.3f} s per validation pass")
    print(f"  speed-up {naive_s / fast_s:.2f}x (analytic multiply-adds: {naive_macs / algo.predict_macs():.2f}x)   "
          f"same predictions: {same}   max rel. goodness diff {err:.1e}")


if __name__ == "__main__":
    main()
