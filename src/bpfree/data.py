"""Datasets: read raw files, verify checksums, make the protocol's fixed split, save as tensors.

Prepared data sets are stored as uint8 (or the native integer range) plus normalisation constants
and are normalised on the training device when loaded, so that a prepared MNIST is 55 MB, not 220.
"""
from __future__ import annotations

import gzip
import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bpfree import io
from bpfree.errors import BpfreeError

class DataError(BpfreeError, RuntimeError):
    """A data file is missing, unreadable or does not match its checksum."""


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _where(ds: Dataset, root: Path) -> str:
    return (f"put the {ds.name} files under {root / ds.folder} (torchvision's layout) "
            f"or set data_root in the config to the folder that holds {ds.folder.split('/')[0]}/")


def _read_checked(path: Path, expected: str | None, ds: Dataset, root: Path) -> bytes:
    """Return the decoded bytes of `path` (or `path.gz`), verified against `expected` md5."""
    candidates = [path, path.with_name(path.name + ".gz")]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        raise DataError(f"missing data file {path}[.gz] (expected md5 of content {expected}); "
                        + _where(ds, root))
    try:
        raw = found.read_bytes()
        data = gzip.decompress(raw) if found.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {found}: {e} (expected md5 of content {expected}); "
                        + _where(ds, root)) from e
    got = _md5(data)
    if expected is not None and got != expected:
        raise DataError(f"corrupt data file {found}: md5 of content is {got}, expected {expected}; "
                        "delete it and " + _where(ds, root))
    return data


def _parse_idx(data: bytes, name: str) -> np.ndarray:
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise DataError(f"{name}: not an IDX ubyte file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_idx(ds: Dataset, root: Path, checksums: dict | None) -> dict[str, np.ndarray]:
    """MNIST-style IDX files (plain or .gz): train and t10k images and labels."""
    sums = ds.files if checksums is None else checksums
    d = root / ds.folder
    arr = {n: _parse_idx(_read_checked(d / n, sums.get(n), ds, root), n) for n in ds.files}
    return {"x_train": arr["train-images-idx3-ubyte"][:, None], "y_train": arr["train-labels-idx1-ubyte"],
            "x_test": arr["t10k-images-idx3-ubyte"][:, None], "y_test": arr["t10k-labels-idx1-ubyte"]}


def read_cifar(ds: Dataset, root: Path, checksums: dict | None, *, test: str,
               label_key: bytes) -> dict[str, np.ndarray]:
    """CIFAR python pickles: every file but `test` is a training batch."""
    sums = ds.files if checksums is None else checksums
    d = root / ds.folder

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        raw = _read_checked(d / name, sums.get(name), ds, root)
        try:
            entry = pickle.loads(raw, encoding="bytes")
            x = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(entry[label_key], dtype=np.int64)
        except Exception as e:  # noqa: BLE001 - any decoding failure is a corrupt file
            raise DataError(f"corrupt CIFAR pickle {d / name}: {e}; " + _where(ds, root)) from e
        return x, y

    parts = [batch(n) for n in sorted(n for n in ds.files if n != test)]
    x_test, y_test = batch(test)
    return {"x_train": np.concatenate([p[0] for p in parts]), "y_train": np.concatenate([p[1] for p in parts]),
            "x_test": x_test, "y_test": y_test}


DIGITS_SPLIT = {"val": 360, "test": 360, "seed": 0}  # stratified, fixed


def read_digits(ds: Dataset, root: Path | None, checksums: dict | None) -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (values 0..16), split here: stratified, fixed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    b = load_digits()
    x = b.images.astype(np.uint8)[:, None]
    y = b.target.astype(np.int64)
    s = DIGITS_SPLIT
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=s["test"], stratify=y,
                                                      random_state=s["seed"])
    x_tr, x_val, y_tr, y_val = train_test_split(x_rest, y_rest, test_size=s["val"], stratify=y_rest,
                                                random_state=s["seed"])
    return {"x_train": x_tr, "y_train": y_tr, "x_val": x_val, "y_val": y_val, "x_test": x_test, "y_test": y_test}


@dataclass(frozen=True)
class Dataset:
    """One dataset: its files, reader, split, normalisation and augmentation (docs/adding-a-dataset.md).

    read:    (dataset, data_root, checksums or None) -> arrays x_train, y_train, x_test, y_test
             (uint8 images (N, C, H, W), int64 labels), and x_val, y_val if it splits itself
    files:   file name -> md5 of its decoded content (verified on every read)
    folder:  where the files lie under data_root (torchvision's layout); None for a built-in set
    n_val:   the validation split is the last n_val images of the official training set (protocol)
    mean, std: per channel, of images divided by `scale`; None: the training split's own statistics
    augment: random crop (padding 4) and horizontal flip of every training batch
    """

    name: str
    read: Callable[..., dict[str, np.ndarray]]
    classes: int
    files: dict[str, str] = field(default_factory=dict)
    folder: str | None = None
    n_val: int = 0
    scale: float = 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = False


# md5 of the *decoded* (decompressed) content of the IDX files (the .gz may be recompressed copies),
# and of the CIFAR pickles as torchvision lists them (never recompressed). Normalisation statistics
# and validation sizes are the protocol's (docs/protocol.md, "Data").
REGISTRY: dict[str, Dataset] = {d.name: d for d in (
    Dataset("digits", read_digits, classes=10, scale=16.0),
    Dataset("mnist", read_idx, classes=10, folder="MNIST/raw", n_val=10_000, mean=(0.1307,), std=(0.3081,), files={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}),
    Dataset("fashion_mnist", read_idx, classes=10, folder="FashionMNIST/raw", n_val=6_000, mean=(0.2860,),
            std=(0.3530,), files={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"}),
    Dataset("cifar10", partial(read_cifar, test="test_batch", label_key=b"labels"), classes=10,
            folder="cifar-10-batches-py", n_val=5_000, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
            augment=True, files={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e"}),
    Dataset("cifar100", partial(read_cifar, test="test", label_key=b"fine_labels"), classes=100,
            folder="cifar-100-python", n_val=5_000, mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761),
            augment=True, files={
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}),
)}


def get(name: str) -> Dataset:
    """The registry's record of `name`, or DataError listing the known ones."""
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def prepare(dataset: str, data_root: str | Path | None, out: str | Path,
            checksums: dict | None = None) -> dict:
    """Read `dataset`, apply the fixed split, and save it to `out` (torch file). Returns its meta."""
    ds = get(dataset)
    if ds.folder is not None and data_root is None:
        raise DataError(f"dataset {dataset!r} needs data_root in the config; " + _where(ds, Path("<data_root>")))
    arr = ds.read(ds, None if data_root is None else Path(data_root), checksums)
    if ds.n_val:
        arr["x_val"], arr["y_val"] = arr["x_train"][-ds.n_val:], arr["y_train"][-ds.n_val:]
        arr["x_train"], arr["y_train"] = arr["x_train"][:-ds.n_val], arr["y_train"][:-ds.n_val]
    mean, std = ds.mean, ds.std
    if mean is None:  # statistics of the training split
        xtr = arr["x_train"].astype(np.float64) / ds.scale
        mean, std = tuple(float(v) for v in xtr.mean((0, 2, 3))), tuple(float(v) for v in xtr.std((0, 2, 3)))
    n_classes = int(max(arr["y_train"].max(), arr["y_test"].max()) + 1)
    meta = {"dataset": dataset, "n_classes": n_classes, "shape": list(arr["x_train"].shape[1:]),
            "scale": ds.scale, "mean": list(mean), "std": list(std), "augment": ds.augment,
            "sizes": {k: int(len(arr[f"y_{k}"])) for k in ("train", "val", "test")}}
    blob = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arr.items()}
    blob["meta"] = meta
    out = Path(out)
    with io.atomic(out) as tmp:  # a killed job never leaves a truncated data file
        torch.save(blob, tmp)
    return meta


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
