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

from bpfree import datasets
from bpfree.cli import main as cli_main

from cluster_helpers import REPO, TINY, make_repo, planned_jobs, snakemake, write_config


def test_every_registered_dataset_is_accepted_and_listed(capsys):
    from bpfree import config

    cfg = copy.deepcopy(TINY)
    for name, ds in datasets.REGISTRY.items():
        cfg["datasets"] = [name]
        cfg["data_root"] = None if ds.folder is None else str(REPO.parent / "shared" / "datasets")
        if ds.folder is None or (REPO.parent / "shared" / "datasets" / ds.folder).is_dir():
            config.validate(copy.deepcopy(cfg))
    with pytest.raises(SystemExit):
        cli_main(["prepare", "--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in datasets.REGISTRY)


def _idx(arr: np.ndarray) -> bytes:
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _guide_entry() -> str:
    guide = (REPO / "docs" / "adding-a-dataset.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    return next(b for b in blocks if b.startswith('Dataset("kmnist"'))


@pytest.mark.slow
def test_a_dataset_added_by_one_registry_entry_runs_through_the_workflow(tmp_path):
    """docs/adding-a-dataset.md's entry, pasted into the registry of a copy of the package with an
    existing results tree (digits), with a tiny KMNIST-format dataset: `snakemake -n` plans the new
    dataset's jobs and the report, nothing else (nor does a new locality label); then prepare,
    search, final runs and report run on it, and nothing else was edited."""
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
    cfg.update(datasets=["digits"], data_root=str(tmp_path / "data"), limit_train=1000)
    cfg["protocol"]["stopping"] = {"max_epochs": 10, "patience": 10}
    root = make_repo(tmp_path / "repo", cfg)
    env = {"PYTHONPATH": str(root / "src")}
    snakemake(root, "--cores", "2", extra_env=env, timeout=900)  # an existing results tree, on digits
    registry = root / "src" / "bpfree" / "datasets.py"
    anchor = "REGISTRY: dict[str, Dataset] = {d.name: d for d in (\n"
    registry.write_text(registry.read_text().replace(anchor, anchor + "    " + entry.strip() + "\n"))
    localities = root / "src" / "bpfree" / "localities.py"  # a new locality label, too
    localities.write_text(localities.read_text().replace("LOCALITIES = {\n", 'LOCALITIES = {\n    "new": "a label",\n'))
    assert planned_jobs(snakemake(root, "-n", extra_env=env).stdout) == set()  # neither reruns a job
    cfg["datasets"] = ["digits", "kmnist"]
    write_config(root, cfg)
    planned = planned_jobs(snakemake(root, "-n", extra_env=env).stdout)
    assert planned and all("kmnist" in out for rule, out in planned if rule not in ("report", "all")), planned
    assert {rule for rule, _ in planned} >= {"prepare", "search", "train", "report"}
    snakemake(root, "--cores", "2", extra_env=env, timeout=900)
    df = pd.read_csv(root / "results" / "summary.csv")
    df = df[df.dataset == "kmnist"]
    assert set(df.algorithm) == {"bp", "mf"}
    assert (df.test_accuracy > 40).all()  # chance is 10 %: two bright rows say the class
    assert "kmnist" not in (REPO / "src" / "bpfree" / "datasets.py").read_text()  # the copy only
