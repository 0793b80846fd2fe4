"""bp and mf on the MNIST 2x1000 MLP at batch 128, each stage beside its floor: `bench/floor.py`
with `--algorithms bp mf` (which it was before floor.py generalised it to any algorithm; every
option of floor.py applies).

    python bench/mlp_throughput.py [--data resources/data/mnist.pt] [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import floor  # noqa: E402

if __name__ == "__main__":
    floor.main(defaults={"algorithms": ["bp", "mf"]})
