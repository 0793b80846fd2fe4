"""The dataset registry: where each dataset's files lie, how to read and verify them (checksums of
decoded content), the protocol's fixed split and normalisation; `prepare` saves one as tensors.

A dataset is one entry of REGISTRY (docs/adding-a-dataset.md). Training jobs never read this
module: they read the prepared file (`bpfree.data.load`), whose meta carries what they need, so
a new entry adds its own jobs and reruns nothing else (the prepare job of a dataset depends on its
entry and its reader, `fingerprint`).
"""
from __future__ import annotations

import gzip
import hashlib
import inspect
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bpfree import io, sources
from bpfree.data import DataError


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
    n_classes = ds.classes  # the registry's, not the largest label seen: a split may lack the last class
    for k in ("train", "val", "test"):
        y = arr.get(f"y_{k}")
        if y is not None and len(y) and not (0 <= y.min() and y.max() < n_classes):
            raise DataError(f"dataset {dataset!r}: {k} labels in {y.min()}..{y.max()}, but its registry entry has "
                            f"classes={n_classes}")
    meta = {"dataset": dataset, "n_classes": n_classes, "shape": list(arr["x_train"].shape[1:]),
            "scale": ds.scale, "mean": list(mean), "std": list(std), "augment": ds.augment,
            "sizes": {k: int(len(arr[f"y_{k}"])) for k in ("train", "val", "test")}}
    blob = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arr.items()}
    blob["meta"] = meta
    out = Path(out)
    with io.atomic(out) as tmp:  # a killed job never leaves a truncated data file
        torch.save(blob, tmp)
    return meta


def fingerprint(name: str) -> str:
    """What the prepared file of `name` depends on: its registry entry, its reader's source and
    `prepare`'s (a hash; the workflow's prepare job takes it as a param, so editing them reprepares
    that dataset only)."""
    ds = get(name)
    read = ds.read.func if isinstance(ds.read, partial) else ds.read
    entry = {k: v for k, v in vars(ds).items() if k != "read"}  # repr(ds.read) holds a memory address
    bound = ds.read.keywords if isinstance(ds.read, partial) else {}
    return sources.digest({"entry": entry, "read": inspect.getsource(read), "read_keywords": bound,
                           "prepare": inspect.getsource(prepare)}, length=16)
