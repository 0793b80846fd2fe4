from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from bpfree import config
from bpfree.data import load
from bpfree.datasets import REGISTRY, prepare

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "datasets"


def load_shipped(path: Path) -> dict:
    """`config.load` of a shipped config. In a clone without the shared datasets beside it, its
    data_root is pointed at empty stand-in folders first: everything else is checked as ever, and
    the data_root check has its own tests."""
    cfg = yaml.safe_load(path.read_text())
    if cfg.get("data_root") is not None and not (ROOT / cfg["data_root"]).is_dir():
        cfg["data_root"] = _stand_in_data_root()
    config.validate(cfg)
    return cfg


@functools.cache
def _stand_in_data_root() -> str:
    """One set of empty dataset folders for the session, removed at exit."""
    held = tempfile.TemporaryDirectory(prefix="bpfree-data-root-")
    _HELD.append(held)
    for ds in REGISTRY.values():
        if ds.folder is not None:
            (Path(held.name) / ds.folder).mkdir(parents=True, exist_ok=True)
    return held.name


_HELD: list[tempfile.TemporaryDirectory] = []  # kept alive until exit, when each removes its folder

# The locks that keep metered runs alone (bpfree.alone) live in a folder of this test session, not in
# the host's: the tests' jobs neither wait for a study running on this machine nor delay its runs.
_HELD.append(tempfile.TemporaryDirectory(prefix="bpfree-metered-locks-"))
os.environ["BPFREE_METERED_LOCK_DIR"] = _HELD[-1].name
# The per-machine cache of CodeCarbon's CPU detection (metering.readers.cache_cpu_detection) too:
# the tests write nothing under the user's home.
_HELD.append(tempfile.TemporaryDirectory(prefix="bpfree-cache-"))
os.environ["BPFREE_CACHE_DIR"] = _HELD[-1].name


@pytest.fixture(scope="session")
def digits_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.pt"
    prepare("digits", None, path)
    return path


@pytest.fixture(scope="session")
def digits(digits_path):
    return load(digits_path)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tests share 2 cores; one thread is faster and steadier here
