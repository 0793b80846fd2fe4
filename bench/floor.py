"""Benchmark: every algorithm's training epoch beside its *floor* (not a test).

    python bench/floor.py [--config config/config.yaml] [--architecture mlp-2x1000]
                          [--algorithms bp mf ...] [--data mnist.pt] [--batch-size 128]
                          [--threads 2] [--repeats 3] [--params 'mf={"lr": 0.001}'] [--out PREFIX] [--ops]

Time and energy deltas between algorithms mean something only if each implementation is about as
close to its floor as the others. The floor of a stage is what one of its training epochs would
cost if everything but its own matrix products and optimiser steps were free: indexing, the
nonlinearities, the loss, autograd's bookkeeping and Python.

Method. One epoch of the stage runs under a dispatch-level recorder (a TorchDispatchMode: it sees
each aten kernel call below autograd, the backward pass's included) that keeps every matrix
product (mm, addmm, bmm, convolution and its backward, dense linear algebra) and every fused
optimiser step (`_fused_adam_`, `_fused_adamw_`, `_fused_sgd_`, ...) with its exact arguments:
shapes, strides, storage offsets, which tensors share storage, scalars. The floor replays that list,
in order and with the same counts, on random tensors laid out the same way (one buffer per storage
the epoch used), under no_grad: nothing else runs. It is therefore the algorithm's *own* work at
its own shapes, not what an idealised implementation of the paper would do; redundant products show
up in the other column: the recorded products' FLOPs against 2 x the analytic multiply-adds of
`Algorithm.cost(stage).train` per training image (ratio 1.00 = the code does the products the
paper's rule needs, no more; above 1 = extra work, e.g. a recomputed forward).

Timing. Per stage: one warm-up epoch, the recorded epoch, one warm-up replay, then `--repeats`
pairs of (epoch, floor) in alternating order (ABBA), each a wall-clock median; "% of floor" is the
median over pairs of floor / epoch, so a machine whose speed drifts hits both sides of a pair alike.
"% fastest" is the fastest floor over the fastest epoch: other processes only ever add time, so on a
shared machine the fastest of several repeats is the best estimate of a quiet run (as timeit's
minimum); with 2 threads on a loaded machine an epoch waits whenever one of its threads is
descheduled, and only this column stays meaningful (use many repeats of short epochs, --n-train).
Only `train_epoch` is timed (validation is the same forward for every algorithm and is not part of
the floor). Hyperparameters: an algorithm named in `--config` gets its `fixed` settings and the
middle of each searched range (geometric middle on a log scale, first choice of a categorical);
`--batch-size` overrides the batch size of every algorithm that has one; a name that is not in the
config is taken as an `impl` with its declared defaults (lr 1e-3 where it has none); `--params
NAME=JSON` sets anything. Data: random MNIST-shaped tensors (50,000 training images), or `--data`
(a prepared data set from `bpfree prepare`).

Columns: s/epoch and floor s/epoch (medians), % of floor, % fastest, analytic GFLOP per epoch, recorded GFLOP
(of the products the epoch ran) and their ratio, achieved GFLOP/s (analytic FLOPs / s/epoch, as
metrics.json's achieved_gflops), the floor's GFLOP/s (recorded FLOPs / floor s), and per optimiser
step the recorded products and fused optimiser kernels. `--out PREFIX` writes PREFIX.csv and
PREFIX.md. See docs/floor.md.
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakedata import data_or_fake  # noqa: E402

from bpfree import algorithms, hparams  # noqa: E402
from bpfree.algorithms.base import Algorithm, generator  # noqa: E402
from bpfree.data import Data  # noqa: E402

aten = torch.ops.aten
# Dense linear algebra without a FLOP formula in torch.utils.flop_counter: replayed, counted as 0 FLOPs.
OTHER_PRODUCTS = {aten.mv, aten.addmv, aten.dot, aten.addbmm, aten.linalg_cholesky_ex, aten.linalg_solve_ex,
                  aten.linalg_lstsq, aten.linalg_inv_ex, aten.cholesky_solve, aten.triangular_solve,
                  aten.linalg_solve_triangular, aten._linalg_solve_ex, aten._linalg_eigh, aten._linalg_svd}


def kind(func) -> str | None:
    """"product", "step" (a fused optimiser kernel) or None (not part of the floor)."""
    packet = func._overloadpacket
    if packet in flop_registry or packet in OTHER_PRODUCTS:
        return "product"
    if packet.__name__.startswith("_fused_"):
        return "step"
    return None


@dataclass(frozen=True)
class TensorSpec:
    """How a recorded argument was laid out: its storage (by address and size), view and dtype."""

    storage: tuple[int, int]
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: torch.dtype


def spec(x):
    if not isinstance(x, torch.Tensor):
        return x
    s = x.untyped_storage()
    return TensorSpec((s.data_ptr(), s.nbytes()), tuple(x.shape), x.stride(), x.storage_offset(), x.dtype)


class Recorder(TorchDispatchMode):
    """Records the matrix products and fused optimiser steps run under it (see the module's
    docstring), their FLOPs (torch.utils.flop_counter's formulas) and counts per op."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []
        self.call_flops: list[int] = []
        self.flops = 0
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        what = kind(func)
        if what is not None:
            self.calls.append((func, tree_map(spec, args), tree_map(spec, kwargs)))
            self.counts[(what, func._overloadpacket.__name__)] += 1
            formula = flop_registry.get(func._overloadpacket)
            self.call_flops.append(int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0)
            self.flops += self.call_flops[-1]
        return out


def signature(func, args) -> str:
    """A recorded call in one line: the op and its tensor arguments' shapes, T marking a
    transposed (column-major) matrix, or the number and total size of a fused step's tensors."""
    specs = [s for s in tree_flatten(args)[0] if isinstance(s, TensorSpec)]
    name = func._overloadpacket.__name__
    if kind(func) == "step":
        return f"{name} ({len(specs)} tensors, {sum(math.prod(s.shape) for s in specs):,} elements)"

    def one(s: TensorSpec) -> str:
        transposed = len(s.shape) == 2 and s.stride[0] == 1 and s.shape[0] > 1 and s.shape[1] > 1
        return "x".join(map(str, s.shape)) + ("T" if transposed else "")

    return f"{name} " + " ".join(one(s) for s in specs)


class Floor:
    """A replay of recorded calls on fresh random tensors with the recorded layout. Calling it
    runs the calls once, in order, and waits for the device."""

    def __init__(self, calls: list[tuple], device: torch.device):
        self.device = device
        buffers: dict[tuple[int, int], torch.Tensor] = {}

        def tensor(s):
            if not isinstance(s, TensorSpec):
                return s
            size = s.storage[1] // s.dtype.itemsize
            buf = buffers.get(s.storage)
            if buf is None:  # in [0.5, 1.5): no denormals, no zero step count or variance in Adam
                buf = buffers[s.storage] = torch.rand(size, dtype=s.dtype, device=device).add_(0.5)
            return buf.view(s.dtype).as_strided(s.shape, s.stride, s.offset)

        self.calls = [(f, tree_map(tensor, a), tree_map(tensor, k)) for f, a, k in calls]
        self.nbytes = sum(b.untyped_storage().nbytes() for b in buffers.values())

    @torch.no_grad()
    def __call__(self, only: list[int] | None = None) -> None:
        for i in range(len(self.calls)) if only is None else only:
            f, a, k = self.calls[i]
            f(*a, **k)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def breakdown(self, calls: list[tuple], flops: list[int]) -> list[tuple[str, int, float, float]]:
        """Per distinct call (`signature`): (signature, count, seconds of its calls replayed alone,
        their GFLOP), slowest first: where the floor's time goes, and which product runs slowly."""
        groups: dict[str, list[int]] = {}
        for i, (f, a, k) in enumerate(calls):
            groups.setdefault(signature(f, (a, k)), []).append(i)
        out = [(sig, len(ix), min(timed(lambda: self(ix)) for _ in range(3)), sum(flops[i] for i in ix) / 1e9)
               for sig, ix in groups.items()]
        return sorted(out, key=lambda r: -r[2])


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Row:
    algorithm: str
    impl: str
    stage: str
    s_epoch: float
    floor_s: float
    pct_of_floor: float
    pct_fastest: float
    analytic_gflop: float
    recorded_gflop: float
    achieved_gflops: float
    floor_gflops: float
    products_per_step: float
    fused_steps_per_step: float
    ops: list = field(default_factory=list, repr=False)  # Floor.breakdown, with --ops

    @property
    def ratio(self) -> float:
        return self.recorded_gflop / self.analytic_gflop if self.analytic_gflop else math.nan


def measure_stage(name: str, algo: Algorithm, stage, data: Data, repeats: int, gen: torch.Generator,
                  ops: bool = False) -> Row:
    """Time `stage` of `algo` (begun by the caller) against its floor; see the module docstring."""
    def epoch() -> None:
        float(algo.train_epoch(stage, data, gen))

    epoch()  # warm-up
    with Recorder() as rec:
        epoch()
    per_kind = collections.Counter()
    for (what, _), n in rec.counts.items():
        per_kind[what] += n
    n_batches = math.ceil(len(data.y_train) / getattr(algo.hp, "batch_size", len(data.y_train)))
    floor = Floor(rec.calls, algo.device)
    floor()  # warm-up
    pairs = []
    for r in range(repeats):
        if r % 2 == 0:
            e = timed(epoch)
            f = timed(floor)
        else:
            f = timed(floor)
            e = timed(epoch)
        pairs.append((e, f))
    es, fs = [p[0] for p in pairs], [p[1] for p in pairs]
    analytic = 2 * algo.cost(stage).train * len(data.y_train)
    return Row(name, type(algo).__module__.rsplit(".", 1)[-1], stage.name, statistics.median(es),
               statistics.median(fs), 100 * statistics.median(f / e for e, f in pairs), 100 * min(fs) / min(es),
               analytic / 1e9,
               rec.flops / 1e9, analytic / statistics.median(es) / 1e9, rec.flops / statistics.median(fs) / 1e9,
               per_kind["product"] / n_batches, per_kind["step"] / n_batches,
               floor.breakdown(rec.calls, rec.call_flops) if ops else [])


def measure(name: str, impl: str, params: dict, arch: dict, data: Data, device: torch.device,
            repeats: int, ops: bool = False) -> list[Row]:
    """Every stage of one algorithm, in order (end_stage between them, as the engine runs it)."""
    cls = algorithms.get(impl)
    torch.manual_seed(0)
    algo = cls(arch, data.meta, hparams.parse(cls.Settings, params, where=f"{name}"), device)
    gen = generator(device, 0)
    rows = []
    for stage in algo.stages():
        algo.begin_stage(stage, data, stage.epochs or 1000)
        rows.append(measure_stage(name, algo, stage, data, repeats, gen, ops))
        algo.end_stage(stage, data)
    return rows


# ---- what to run ----------------------------------------------------------------------------------

def architecture(text: str, cfg: dict) -> dict:
    """A name under the config's `architectures`, `mlp-<N>x<W>` (N hidden layers of width W), or an
    inline JSON entry such as {"type": "cnn", "channels": [32, 64, 128]}."""
    if text in cfg.get("architectures", {}):
        return cfg["architectures"][text]
    if m := re.fullmatch(r"mlp-(\d+)x(\d+)", text):
        return {"type": "mlp", "widths": [int(m[2])] * int(m[1])}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise SystemExit(f"floor: architecture {text!r} is not in the config, not mlp-NxW and not JSON") from None


def middle(p: dict):
    """The point of a search range the benchmark uses (the cost rarely depends on it)."""
    if p.get("type") == "categorical":
        return p["choices"][0]
    lo, hi = p["low"], p["high"]
    mid = math.sqrt(lo * hi) if p.get("log") else (lo + hi) / 2
    return round(mid) if p.get("type") == "int" else mid


def settings(name: str, cfg: dict, batch_size: int | None, overrides: dict) -> tuple[str, dict]:
    """(impl, settings) of an algorithm named in the config, or of an impl with its defaults."""
    entry = cfg.get("algorithms", {}).get(name, {"impl": name})
    cls = algorithms.get(entry["impl"])
    declared = hparams.fields(cls.Settings)
    params = {**entry.get("fixed", {}), **{k: middle(p) for k, p in entry.get("space", {}).items()}}
    if batch_size and "batch_size" in declared:
        params["batch_size"] = batch_size
    if "lr" in declared and declared["lr"].required and "lr" not in params:
        params["lr"] = 1e-3
    params.update(overrides.get(name, {}))
    return entry["impl"], params


def matmul_rate(n: int = 2048, seconds: float = 1.0) -> float:
    """GFLOP/s of an n^3 float32 matmul on the CPU (median of 5 windows), for context."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    rates = []
    for _ in range(5):
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 5:
            a @ b
            reps += 1
        rates.append(2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


# ---- output ---------------------------------------------------------------------------------------

COLUMNS = [("algorithm", "algorithm", "{}"), ("stage", "stage", "{}"), ("s/epoch", "s_epoch", "{:.3f}"),
           ("floor s/epoch", "floor_s", "{:.3f}"), ("% of floor", "pct_of_floor", "{:.0f}"),
           ("% fastest", "pct_fastest", "{:.0f}"),
           ("analytic GFLOP", "analytic_gflop", "{:.1f}"), ("recorded GFLOP", "recorded_gflop", "{:.1f}"),
           ("recorded/analytic", "ratio", "{:.2f}"), ("GFLOP/s", "achieved_gflops", "{:.1f}"),
           ("floor GFLOP/s", "floor_gflops", "{:.1f}"), ("products/step", "products_per_step", "{:.1f}"),
           ("fused steps/step", "fused_steps_per_step", "{:.1f}")]


def table(rows: list[Row]) -> list[list[str]]:
    return [[h for h, _, _ in COLUMNS]] + [[fmt.format(getattr(r, k)) for _, k, fmt in COLUMNS] for r in rows]


def write(rows: list[Row], prefix: str, header: str) -> None:
    t = table(rows)
    with open(f"{prefix}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([k for _, k, _ in COLUMNS])
        w.writerows([getattr(r, k) for _, k, _ in COLUMNS] for r in rows)
    lines = [header, "", "| " + " | ".join(t[0]) + " |", "|" + " --- |" * len(t[0])]
    lines += ["| " + " | ".join(r) + " |" for r in t[1:]]
    Path(f"{prefix}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None, defaults: dict | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="config file: architectures and algorithm entries (impl, fixed, space)")
    ap.add_argument("--architecture", default="mlp-2x1000", help="name in the config, mlp-NxW, or JSON")
    ap.add_argument("--algorithms", nargs="+",
                    help="names in the config, or impls (default: every algorithm of the config that runs on "
                         "the architecture; without a config: bp mf)")
    ap.add_argument("--data", help="prepared data set (default: random MNIST-shaped tensors)")
    ap.add_argument("--n-train", type=int, help="training images (default: all; 50,000 fake ones)")
    ap.add_argument("--batch-size", type=int, default=128, help="for every algorithm that has one (0: the config's)")
    ap.add_argument("--params", action="append", default=[], metavar="NAME=JSON", help="settings of one algorithm")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3, help="timed (epoch, floor) pairs per stage")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write PREFIX.csv and PREFIX.md")
    ap.add_argument("--ops", action="store_true",
                    help="per stage, each distinct recorded call replayed alone: count, seconds, GFLOP/s")
    ap.set_defaults(**(defaults or {}))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = yaml.safe_load(Path(a.config).read_text()) if a.config else {}
    arch = architecture(a.architecture, cfg)
    overrides = {}
    for p in a.params:
        name, _, text = p.partition("=")
        overrides[name] = json.loads(text)
    names = a.algorithms or [n for n, e in cfg.get("algorithms", {}).items()
                             if arch["type"] in algorithms.get(e["impl"]).ARCHITECTURES] or ["bp", "mf"]
    device = torch.device(a.device)
    data = data_or_fake(a.data, a.n_train)
    data = Data(*(getattr(data, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")),
                data.meta)
    header = (f"torch {torch.__version__}, {a.threads} thread(s), {device}, data {data.meta['dataset']} "
              f"({len(data.y_train)} training images), architecture {a.architecture} {json.dumps(arch)}, "
              f"batch {a.batch_size or 'as configured'}, {a.repeats} (epoch, floor) pairs per stage")
    if device.type == "cpu":
        header += f"; matmul 2048^3: {matmul_rate():.1f} GFLOP/s"
    print(header, flush=True)
    rows = []
    for name in names:
        impl, params = settings(name, cfg, a.batch_size, overrides)
        if arch["type"] not in algorithms.get(impl).ARCHITECTURES:
            print(f"{name}: skipped, {impl} does not run on {arch['type']}", flush=True)
            continue
        for row in measure(name, impl, params, arch, data, device, a.repeats, a.ops):
            rows.append(row)
            print(f"{name} {row.stage}: {row.s_epoch:.3f} s/epoch, floor {row.floor_s:.3f} s "
                  f"({row.pct_of_floor:.0f} %, fastest of each: {row.pct_fastest:.0f} %), recorded/analytic FLOPs "
                  f"{row.ratio:.2f}  [{json.dumps(params)}]", flush=True)
            for sig, n, sec, gflop in row.ops:
                rate = f"{gflop / sec:7.1f} GFLOP/s" if gflop else ""
                print(f"    {sig:<56}{n:>7} calls {sec:8.3f} s ({100 * sec / row.floor_s:3.0f} % of the floor) {rate}")
    t = table(rows)
    widths = [max(len(r[i]) for r in t) for i in range(len(t[0]))]
    for r in t:
        print("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if a.out:
        write(rows, a.out, header)
    return rows


if __name__ == "__main__":
    main()
