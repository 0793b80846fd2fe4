"""Wall-time overhead of metering on a training run (a script, not a test).

The same BP training (fixed number of epochs: patience = cap, so both arms do identical work) runs
alternately without a meter and inside a Meter window (sampler thread at `--sample-hz`, CodeCarbon's
scheduler, one mark per epoch). The overhead is the median metered training-phase wall time over the
median unmetered one, minus 1; the paired per-repeat ratio and the meter's fixed start/stop cost
(outside the window: CodeCarbon set-up, idle baseline excluded) are printed beside it.

Digits epochs are tiny (~0.1 s), so a per-mark cost shows up here more than anywhere else.

    python bench/metering_overhead.py [--repeats 7] [--epochs 30] [--data resources/data/digits.pt]
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bpfree import algorithms
from bpfree.data import load, prepare
from bpfree.engine import Stopping, fit
from bpfree.metering import Meter


def one_run(data, device, epochs: int, seed: int, meter: Meter | None) -> tuple[float, float, float]:
    """Train BP for `epochs` epochs; return (training-phase wall seconds, meter start+stop seconds,
    process CPU seconds of the training phase, all threads: the meter's own included)."""
    torch.manual_seed(seed)
    meta = data.meta
    algo = algorithms.get("bp")({"type": "mlp", "widths": [256, 256]}, meta,
                                {"batch_size": 128, "lr": 3e-3, "weight_decay": 1e-5}, device)
    stopping = Stopping(max_epochs=epochs, patience=epochs + 1)
    fixed = 0.0
    gc.collect()  # both arms start from a collected heap
    if meter is not None:
        t = time.perf_counter()
        meter.start()
        fixed += time.perf_counter() - t
    t0, c0 = time.perf_counter(), time.process_time()
    fit(algo, data, stopping, seed=seed, on_epoch=(lambda rec: meter.mark()) if meter else None)
    if meter is not None:
        meter.stop()  # the window closes here: its edge is inside the timed span, its teardown is not
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        t = time.perf_counter()
        meter.close()
        fixed += time.perf_counter() - t
    else:
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, fixed, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--sample-hz", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=None, help="prepared dataset (default: digits, prepared in a temp dir)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    path = a.data
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="bpfree-bench-")) / "digits.pt"
        prepare("digits", None, path)
    data = load(path, device)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch threads {a.threads}; "
          f"{a.epochs} epochs of BP on {data.meta['dataset']} ({len(data.y_train)} images), {a.repeats} repeats")
    one_run(data, device, 2, 0, None)  # warm-up (allocator, kernels)
    plain, metered, fixed, ratios, cpu_ratios = [], [], [], [], []
    for r in range(a.repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        got = {}
        for use in order:
            m = Meter(device, sample_hz=a.sample_hz) if use else None
            got[use] = one_run(data, device, a.epochs, r, m)
        plain.append(got[False][0])
        metered.append(got[True][0])
        fixed.append(got[True][1])
        ratios.append(got[True][0] / got[False][0])
        cpu_ratios.append(got[True][2] / got[False][2])
        print(f"  repeat {r}: unmetered {got[False][0]:.3f} s  metered {got[True][0]:.3f} s  "
              f"({100 * (ratios[-1] - 1):+.2f} %; CPU time {100 * (cpu_ratios[-1] - 1):+.2f} %)  "
              f"meter start+stop {got[True][1]:.2f} s", flush=True)
    med_p, med_m = statistics.median(plain), statistics.median(metered)
    overhead = 100 * (med_m / med_p - 1)
    print(f"median training phase: unmetered {med_p:.3f} s, metered {med_m:.3f} s")
    print(f"metering overhead (median metered / median unmetered - 1): {overhead:+.2f} %  "
          f"(median of paired ratios {100 * (statistics.median(ratios) - 1):+.2f} %; target < 2 %)")
    rng = random.Random(0)
    boots = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    lo, hi = boots[int(0.025 * len(boots))], boots[int(0.975 * len(boots)) - 1]
    print(f"bootstrap 95 % interval of the median paired ratio: [{100 * (lo - 1):+.2f} %, {100 * (hi - 1):+.2f} %] "
          f"({'resolves' if hi < 1.02 else 'does not resolve'} the < 2 % target at this noise)")
    print(f"process CPU time of the training phase (meter threads included): median paired ratio "
          f"{100 * (statistics.median(cpu_ratios) - 1):+.2f} % (less sensitive to other processes' load)")
    print(f"fixed cost outside the window (CodeCarbon set-up and teardown): median {statistics.median(fixed):.2f} s per run")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
