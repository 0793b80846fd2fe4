"""The registries are the one place a dataset (or an algorithm) is added: the guides' worked examples
run through the whole workflow, and the schema and the CLI take their lists from the registries."""
from __future__ import annotations

import copy
import gzip
import hashlib
import re

import numpy as np
import pandas as pd
import pytest

from bpfree import data
from bpfree.cli import main as cli_main

from cluster_helpers import REPO, TINY, make_repo, snakemake


def test_every_registered_dataset_is_accepted_and_listed(capsys):
    from bpfree import config

    cfg = copy.deepcopy(TINY)
    for name, ds in data.REGISTRY.items():
        cfg["datasets"] = [name]
        cfg["data_root"] = None if ds.folder is None else str(REPO.parent / "shared" / "datasets")
        if ds.folder is None or (REPO.parent / "shared" / "datasets" / ds.folder).is_dir():
            config.validate(copy.deepcopy(cfg))
    with pytest.raises(SystemExit):
        cli_main(["prepare", "--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in data.REGISTRY)


def _idx(arr: np.ndarray) -> bytes:
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _guide_entry() -> str:
    guide = (REPO / "docs" / "adding-a-dataset.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    return next(b for b in blocks if b.startswith('Dataset("kmnist"'))


@pytest.mark.slow
def test_a_dataset_added_by_one_registry_entry_runs_through_the_workflow(tmp_path):
    """docs/adding-a-dataset.md's entry, pasted into the registry of a copy of the package, with a
    tiny KMNIST-format dataset: prepare, search, final runs and report, and nothing else edited."""
    rng = np.random.default_rng(0)
    n_train, n_test = 10_000 + 1000, 200  # the entry's validation split is the last 10,000 images
    y_train, y_test = np.arange(n_train) % 10, np.arange(n_test) % 10

    def x(y: np.ndarray) -> np.ndarray:  # noise, and two bright rows that say the class
        img = rng.integers(0, 60, (len(y), 28, 28))
        img[np.arange(len(y)), 2 * y + 4] += 180
        return img.astype(np.uint8)

    files = {"train-images-idx3-ubyte": x(y_train), "train-labels-idx1-ubyte": y_train,
             "t10k-images-idx3-ubyte": x(y_test), "t10k-labels-idx1-ubyte": y_test}
    raw = tmp_path / "data" / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    entry = _guide_entry()
    for (name, arr), what in zip(files.items(), ("train images", "train labels", "test images", "test labels")):
        content = _idx(arr)
        (raw / f"{name}.gz").write_bytes(gzip.compress(content))
        entry = entry.replace(f"<md5 of the decoded {what}>", hashlib.md5(content).hexdigest())
    cfg = copy.deepcopy(TINY)
    cfg.update(datasets=["kmnist"], data_root=str(tmp_path / "data"), limit_train=1000)
    cfg["protocol"]["stopping"] = {"max_epochs": 10, "patience": 10}
    root = make_repo(tmp_path / "repo", cfg)
    registry = root / "src" / "bpfree" / "data.py"
    anchor = "REGISTRY: dict[str, Dataset] = {d.name: d for d in (\n"
    registry.write_text(registry.read_text().replace(anchor, anchor + "    " + entry.strip() + "\n"))
    snakemake(root, "--cores", "2", extra_env={"PYTHONPATH": str(root / "src")})
    df = pd.read_csv(root / "results" / "summary.csv")
    assert set(df.dataset) == {"kmnist"} and set(df.algorithm) == {"bp", "mf"}
    assert (df.test_accuracy > 40).all()  # chance is 10 %: two bright rows say the class
    assert "kmnist" not in (REPO / "src" / "bpfree" / "data.py").read_text()  # the copy only
