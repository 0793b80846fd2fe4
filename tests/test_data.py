"""Data loading: the fixed splits, IDX (plain and gzipped) and CIFAR pickles, checksums, errors."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bpfree import datasets as D
from bpfree.data import DataError, augment_batch, load
from bpfree.datasets import prepare

from conftest import SHARED_DATA


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_digits_split_is_fixed_stratified_and_normalised(digits_path, tmp_path):
    d = load(digits_path)
    assert d.meta["sizes"] == {"train": 1077, "val": 360, "test": 360}
    assert d.x_train.shape[1:] == (1, 8, 8)
    for y in (d.y_val, d.y_test):
        counts = torch.bincount(y, minlength=10)
        assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 of each class
    assert abs(d.x_train.mean().item()) < 1e-4 and abs(d.x_train.std().item() - 1) < 1e-2
    again = tmp_path / "again.pt"
    prepare("digits", None, again)
    assert torch.equal(load(again).x_test, d.x_test)  # the same split every time


def idx_bytes(arr: np.ndarray) -> bytes:
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fake_mnist(root: Path, n_train=30, n_test=10, gz=True) -> dict:
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
             "train-labels-idx1-ubyte": np.arange(n_train) % 10,
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
             "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    sums = {}
    for name, arr in files.items():
        content = idx_bytes(arr)
        sums[name] = md5(content)
        if gz:
            (raw / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (raw / name).write_bytes(content)
    return sums


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_plain_or_gzipped(tmp_path, monkeypatch, gz):
    monkeypatch.setitem(D.REGISTRY, "mnist", dataclasses.replace(D.REGISTRY["mnist"], n_val=5))
    sums = write_fake_mnist(tmp_path / "root", gz=gz)
    meta = prepare("mnist", tmp_path / "root", tmp_path / "m.pt", checksums=sums)
    assert meta["sizes"] == {"train": 25, "val": 5, "test": 10} and meta["shape"] == [1, 28, 28]
    d = load(tmp_path / "m.pt")
    assert torch.equal(d.y_val, torch.arange(25, 30) % 10)  # validation = the last images of train
    assert d.x_train.dtype == torch.float32


def test_corrupt_file_names_file_checksum_and_where_to_put_data(tmp_path, monkeypatch):
    monkeypatch.setitem(D.REGISTRY, "mnist", dataclasses.replace(D.REGISTRY["mnist"], n_val=5))
    root = tmp_path / "root"
    sums = write_fake_mnist(root)
    bad = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(bad.read_bytes()))
    content[-1] ^= 0xFF
    bad.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError) as e:
        prepare("mnist", root, tmp_path / "m.pt", checksums=sums)
    msg = str(e.value)
    assert str(bad) in msg and sums["train-labels-idx1-ubyte"] in msg and md5(bytes(content)) in msg
    assert "MNIST/raw" in msg and not (tmp_path / "m.pt").exists()


def test_truncated_gzip_and_missing_file(tmp_path):
    root = tmp_path / "root"
    sums = write_fake_mnist(root)
    f = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(DataError, match="cannot read .*t10k-images-idx3-ubyte.gz"):
        prepare("mnist", root, tmp_path / "m.pt", checksums=sums)
    f.unlink()
    expected = sums["t10k-images-idx3-ubyte"]
    with pytest.raises(DataError, match=rf"missing data file .*t10k-images-idx3-ubyte\[\.gz\].*{expected}"):
        prepare("mnist", root, tmp_path / "m.pt", checksums=sums)


def test_real_checksums_are_enforced_by_default(tmp_path):
    """The shipped table is used when no override is given: the fake files fail it."""
    write_fake_mnist(tmp_path / "root")
    with pytest.raises(DataError, match="6bbc9ace898e44ae57da46a324031adb"):
        prepare("mnist", tmp_path / "root", tmp_path / "m.pt")


def test_missing_data_root_and_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="needs data_root"):
        prepare("mnist", None, tmp_path / "m.pt")
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        prepare("svhn", None, tmp_path / "m.pt")
    with pytest.raises(DataError, match="run `bpfree prepare`"):
        load(tmp_path / "nothing.pt")


def write_fake_cifar(root: Path, which: str, per_batch=4) -> dict:
    rng = np.random.default_rng(1)
    if which == "cifar10":
        d, key = root / "cifar-10-batches-py", b"labels"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    else:
        d, names, key = root / "cifar-100-python", ["train", "test"], b"fine_labels"
    d.mkdir(parents=True)
    sums = {}
    for k, name in enumerate(names):
        n = per_batch * (5 if which == "cifar100" and name == "train" else 1)
        entry = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                 key: [int(v) for v in (np.arange(n) + k) % (10 if which == "cifar10" else 100)]}
        content = pickle.dumps(entry)
        (d / name).write_bytes(content)
        sums[name] = md5(content)
    return sums


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_cifar_pickle_fixture(tmp_path, monkeypatch, which):
    monkeypatch.setitem(D.REGISTRY, which, dataclasses.replace(D.REGISTRY[which], n_val=4))
    sums = write_fake_cifar(tmp_path / "root", which)
    meta = prepare(which, tmp_path / "root", tmp_path / "c.pt", checksums=sums)
    assert meta["shape"] == [3, 32, 32] and meta["sizes"] == {"train": 16, "val": 4, "test": 4}
    assert meta["augment"] is True and len(meta["mean"]) == 3
    d = load(tmp_path / "c.pt")
    assert d.x_train.shape == (16, 3, 32, 32)
    # normalisation uses the protocol's per-channel statistics
    raw = torch.load(tmp_path / "c.pt", weights_only=True)["x_train"].float() / 255
    mean = torch.tensor(D.REGISTRY[which].mean).view(1, 3, 1, 1)
    std = torch.tensor(D.REGISTRY[which].std).view(1, 3, 1, 1)
    torch.testing.assert_close(d.x_train, (raw - mean) / std)


def test_corrupt_cifar_pickle(tmp_path, monkeypatch):
    sums = write_fake_cifar(tmp_path / "root", "cifar10")
    f = tmp_path / "root" / "cifar-10-batches-py" / "data_batch_3"
    f.write_bytes(b"not a pickle")
    sums["data_batch_3"] = md5(b"not a pickle")  # right checksum, undecodable content
    with pytest.raises(DataError, match="corrupt CIFAR pickle .*data_batch_3"):
        prepare("cifar10", tmp_path / "root", tmp_path / "c.pt", checksums=sums)


def test_augment_is_crop_and_flip():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=0)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape


@pytest.mark.skipif(not (SHARED_DATA / "MNIST").exists(), reason="shared MNIST not present")
def test_real_mnist_passes_its_checksums(tmp_path):
    meta = prepare("mnist", SHARED_DATA, tmp_path / "mnist.pt")
    assert meta["sizes"] == {"train": 50_000, "val": 10_000, "test": 10_000}
