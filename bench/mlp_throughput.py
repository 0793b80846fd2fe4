"""Benchmark: seconds per epoch and achieved GFLOP/s of bp and mf training on MNIST-shaped data,
beside this machine's matrix-multiply rate measured in the same run (not a test).

    python bench/mlp_throughput.py [--data resources/data/mnist.pt] [--widths 1000 1000] [--threads 2]

Counts only the FLOPs the algorithm must do (2 x the analytic multiply-adds of `Algorithm.cost`:
no input gradient for the first layer, no forward of frozen layers for cached mf stages).

Beside each stage it times a *floor*: the same matrix products at the same batch size (forward,
weight gradient, input gradient where one is needed) plus the same fused Adam step, and nothing
else: what the stage would cost with free elementwise work, data indexing and framework overhead.
The gap between a stage and its floor is what better code could still win.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bpfree import algorithms, models
from bpfree.algorithms.base import adam, generator
from bpfree.data import Data, load


def matmul_rate(m: int, k: int, n: int, seconds: float = 2.0) -> float:
    """GFLOP/s of an (m x k) @ (k x n) float32 matmul, median over 5 windows."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(5):
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 5:
            a @ b
            reps += 1
        rates.append(2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def fake_mnist(n_train: int = 50_000) -> Data:
    g = torch.Generator().manual_seed(0)
    x = lambda n: torch.randn(n, 1, 28, 28, generator=g)  # noqa: E731
    y = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    meta = {"dataset": "mnist-shaped", "n_classes": 10, "shape": [1, 28, 28], "augment": False}
    return Data(x(n_train), y(n_train), x(10_000), y(10_000), x(10), y(10), meta)


def stage_layers(impl: str, stage: str, dims: list[int], n_classes: int) -> list[tuple[int, int, bool]]:
    """(fan_in, fan_out, needs input gradient) of the products a stage trains, for an MLP of layer
    sizes `dims` (`models.mlp_widths`): bp all layers and the head; an mf stage its layer and that
    layer's projection (the projection's input gradient flows into the layer)."""
    w = [*dims, n_classes]
    if impl == "bp":
        return [(w[i], w[i + 1], i > 0) for i in range(len(w) - 1)]
    i = int(stage.removeprefix("layer")) - 1
    return [(w[i], w[i + 1], False), (w[i + 1], n_classes, True)]


def floor_epoch(layers: list[tuple[int, int, bool]], n: int, bs: int) -> tuple:
    """An epoch of only the stage's matrix products and its fused Adam step. Returns (run, flops)."""
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(o, i, generator=g).mul_(i ** -0.5).requires_grad_() for i, o, _ in layers]
    for w in ws:
        w.grad = torch.randn(w.shape, generator=g)
    opt = adam(ws, 1e-3)
    xs = [torch.randn(bs, i, generator=g) for i, _, _ in layers]
    ds = [torch.randn(bs, o, generator=g) for _, o, _ in layers]
    steps = n // bs

    @torch.no_grad()
    def run() -> None:
        for _ in range(steps):
            for (_, _, dx), w, x, d in zip(layers, ws, xs, ds):
                x @ w.T
                torch.mm(d.T, x, out=w.grad)
                if dx:
                    d @ w
            opt.step()

    return run, 2 * steps * bs * sum(i * o * (3 if dx else 2) for i, o, dx in layers)


def epoch_times(impl: str, hp: dict, data: Data, widths: list[int], repeats: int) -> list[tuple]:
    """Per stage of `impl`: (stage, median s/epoch, median GFLOP/s, median ratio to the 2048^3
    matmul rate measured right before each epoch, the same three for the stage's floor). Pairing
    each epoch with its own reference keeps the ratio steady on a machine whose speed drifts."""
    arch = {"type": "mlp", "widths": widths}
    algo = algorithms.get(impl)(arch, data.meta, hp, torch.device("cpu"))
    gen = generator(torch.device("cpu"), 0)
    dims, n_classes = models.mlp_widths(arch, data.meta["shape"]), data.meta["n_classes"]
    out = []
    for stage in algo.stages():
        algo.begin_stage(stage, data, 10)
        algo.train_epoch(stage, data, gen)  # warm-up
        flops = 2 * algo.cost(stage).train * len(data.y_train)
        floor, floor_flops = floor_epoch(stage_layers(impl, stage.name, dims, n_classes), len(data.y_train),
                                         hp["batch_size"])
        floor()
        times, ratios, ftimes, fratios = [], [], [], []
        for _ in range(repeats):
            ref = matmul_rate(2048, 2048, 2048, seconds=1.0)
            t0 = time.perf_counter()
            float(algo.train_epoch(stage, data, gen))
            times.append(time.perf_counter() - t0)
            ratios.append(flops / times[-1] / 1e9 / ref)
            ref = matmul_rate(2048, 2048, 2048, seconds=1.0)
            t0 = time.perf_counter()
            floor()
            ftimes.append(time.perf_counter() - t0)
            fratios.append(floor_flops / ftimes[-1] / 1e9 / ref)
        sec, fsec = statistics.median(times), statistics.median(ftimes)
        out.append((stage.name, sec, flops / sec / 1e9, statistics.median(ratios),
                    fsec, floor_flops / fsec / 1e9, statistics.median(fratios)))
        algo.end_stage(stage, data)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="prepared MNIST (default: random MNIST-shaped tensors)")
    ap.add_argument("--widths", type=int, nargs="+", default=[1000, 1000])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    data = load(a.data) if a.data else fake_mnist()
    bs = a.batch_size
    print(f"torch {torch.__version__}, {a.threads} threads, data {data.meta['dataset']} "
          f"({len(data.y_train)} training images), widths {a.widths}, batch {bs}")
    peak = matmul_rate(2048, 2048, 2048)
    shaped = matmul_rate(bs, 784, a.widths[0])
    print(f"matmul rate: {peak:.1f} GFLOP/s (2048^3), {shaped:.1f} GFLOP/s ({bs}x784 @ 784x{a.widths[0]})")
    rows = [("bp", s) for s in epoch_times("bp", {"lr": 1e-3, "weight_decay": 1e-5, "batch_size": bs}, data, a.widths, a.repeats)]
    rows += [("mf", s) for s in epoch_times("mf", {"lr": 1e-3, "batch_size": bs}, data, a.widths, a.repeats)]
    print("% = achieved GFLOP/s over the 2048^3 matmul rate read right before each epoch (median);"
          " floor = the stage's matrix products and Adam step alone")
    print(f"{'algorithm':<10}{'stage':<8}{'s/epoch':>9}{'GFLOP/s':>9}{'%':>6}   "
          f"{'floor s/epoch':>13}{'GFLOP/s':>9}{'%':>6}")
    for alg, (stage, sec, gf, ratio, fsec, fgf, fratio) in rows:
        print(f"{alg:<10}{stage:<8}{sec:9.2f}{gf:9.1f}{100 * ratio:5.0f}%   {fsec:13.2f}{fgf:9.1f}{100 * fratio:5.0f}%")


if __name__ == "__main__":
    main()
