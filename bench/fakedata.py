"""The benchmarks' one data builder: random MNIST-shaped tensors (the cost of an epoch does not
depend on the pixel values), or a prepared data set when one is given."""
from __future__ import annotations

import torch

from bpfree.data import Data, load


def fake_data(n_train: int = 50_000, n_eval: int = 10_000, shape: tuple[int, ...] = (1, 28, 28),
              n_classes: int = 10, seed: int = 0) -> Data:
    """N(0, 1) images of `shape` and uniform labels: `n_train` training images, `n_eval` each for
    validation and test (MNIST's split by default)."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, *shape, generator=g), torch.randint(0, n_classes, (n,), generator=g)

    (xt, yt), (xv, yv), (xs, ys) = split(n_train), split(n_eval), split(n_eval)
    c = shape[0]  # already normalised: the statistics a prepared set records, as identity
    meta = {"dataset": "mnist-shaped", "n_classes": n_classes, "shape": list(shape), "augment": False,
            "sizes": {"train": n_train, "val": n_eval, "test": n_eval}, "mean": [0.0] * c, "std": [1.0] * c,
            "scale": 1.0}
    return Data(xt, yt, xv, yv, xs, ys, meta)


def data_or_fake(path: str | None, n_train: int | None = None, **fake) -> Data:
    """The prepared data set at `path` (its first `n_train` training images if given), else
    `fake_data(n_train, **fake)`."""
    if path:
        return load(path, limit_train=n_train)
    return fake_data(**({"n_train": n_train} if n_train else {}), **fake)
