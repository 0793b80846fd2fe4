from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bpfree.data import load, prepare

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "datasets"


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
