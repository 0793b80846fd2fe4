"""Prepared data sets, as training reads them: loaded onto the device and normalised, the search's
class-balanced subsets, the warnings a job logs, and the training-time augmentation.

Prepared data sets (bpfree.datasets.prepare) are stored as uint8 (or the native integer range) plus
normalisation constants and are normalised on the training device when loaded, so that a prepared
MNIST is 55 MB, not 220.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bpfree.errors import BpfreeError


class DataError(BpfreeError, RuntimeError):
    """A data file is missing, unreadable or does not match its checksum."""


@dataclass
class Data:
    """A prepared data set, normalised, as float tensors on the training device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    meta: dict

    @property
    def n_classes(self) -> int:
        return self.meta["n_classes"]

    @property
    def augment(self) -> bool:
        return bool(self.meta.get("augment", False))


def load(path: str | Path, device: torch.device | str = "cpu", limit_train: int | None = None) -> Data:
    """Load a prepared data set onto `device`, normalised (optionally only the first `limit_train` training images)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"prepared data {path} not found; run `bpfree prepare` (or snakemake) first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        missing = [k for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test") if k not in blob]
        missing += [f"meta.{k}" for k in ("dataset", "n_classes", "shape", "mean", "std", "scale", "sizes")
                    if k not in meta]
    except Exception as e:  # truncated zip, not a torch file, not a dict
        raise DataError(f"prepared data {path} is truncated or not a `bpfree prepare` file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); delete it and prepare it again") from None
    if missing:
        raise DataError(f"prepared data {path} lacks {', '.join(missing)}; delete it and prepare it again")
    for split in ("train", "val", "test"):  # a label outside the classes would fail deep in a loss
        x, y = blob[f"x_{split}"], blob[f"y_{split}"]
        if len(x) != len(y) or (len(y) and not (0 <= int(y.min()) and int(y.max()) < meta["n_classes"])):
            raise DataError(f"prepared data {path}: the {split} split has {len(x)} images and {len(y)} labels in "
                            f"{int(y.min()) if len(y) else '-'}..{int(y.max()) if len(y) else '-'}, for "
                            f"n_classes = {meta['n_classes']}; delete it and prepare it again")
    c = len(meta["mean"])
    mean = torch.tensor(meta["mean"], dtype=torch.float32, device=device).view(1, c, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32, device=device).view(1, c, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x.to(device, torch.float32) / meta["scale"] - mean) / std

    xt, yt = blob["x_train"], blob["y_train"]
    if limit_train is not None:
        xt, yt = xt[:limit_train], yt[:limit_train]
        meta = {**meta, "sizes": {**meta["sizes"], "train": int(len(yt))}}
    return Data(norm(xt), yt.to(device, torch.long), norm(blob["x_val"]), blob["y_val"].to(device, torch.long),
                norm(blob["x_test"]), blob["y_test"].to(device, torch.long), meta)


def balanced_subset(data: Data, n: int, split: str = "train") -> Data:
    """The search-fidelity subset: `n` images of the training (or validation) split,
    class-balanced and fixed. Examples are taken round-robin over the classes, each class in the
    split's own (prepared, seeded) order, so the subset depends only on the prepared file and `n`:
    every algorithm and trial sees the same images. A class with fewer examples than its share
    leaves its remainder to the others. The other splits are untouched. ValueError if `n` exceeds
    the split."""
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_val, data.y_val)
    if n > len(y):
        name = {"train": "training", "val": "validation"}[split]
        raise ValueError(f"protocol.search.limit_{split} = {n} exceeds the {name} split ({len(y)} examples)")
    if n == len(y):
        return data
    rank = torch.empty_like(y)  # position of each example within its own class
    for c in torch.unique(y):
        idx = (y == c).nonzero().squeeze(1)
        rank[idx] = torch.arange(len(idx), device=y.device)
    order = torch.argsort(rank * len(y) + torch.arange(len(y), device=y.device))  # by (rank, index)
    keep = order[:n].sort().values
    meta = {**data.meta, "sizes": {**data.meta["sizes"], split: n},
            "subset": {**data.meta.get("subset", {}), split: n,
                       "rule": "class-balanced, first examples of each class in the split's order"}}
    if split == "train":
        return Data(x[keep], y[keep], data.x_val, data.y_val, data.x_test, data.y_test, meta)
    return Data(data.x_train, data.y_train, x[keep], y[keep], data.x_test, data.y_test, meta)


def warnings(data: Data, batch_size: int | None = None, limit_train: int | None = None) -> list[str]:
    """Legal but suspicious inputs, one line each for the job's log: a batch larger than the
    training split (one step per epoch), a training split cut by `limit_train` below 1000 examples
    or below 10 examples of some class."""
    out = []
    n = len(data.y_train)
    if batch_size is not None and batch_size > n:
        out.append(f"batch_size = {batch_size} is larger than the training split ({n} examples): "
                   "each epoch is one optimiser step on the whole split")
    if limit_train is not None:
        per_class = torch.bincount(data.y_train, minlength=data.n_classes).min().item()
        if n < 1000 or per_class < 10:
            out.append(f"limit_train = {limit_train} leaves {n} training examples ({per_class} in the rarest "
                       "class): accuracies measured on so few are noisy and not comparable to full runs")
    return out


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip, on the device, for a batch (N, C, H, W)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # (n, h)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])  # (n, w)
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()
