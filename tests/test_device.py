"""bpfree.device: the one home of device selection, synchronisation and the NVIDIA driver (NVML)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bpfree import device, gpuslots
from bpfree.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src" / "bpfree"


class FakeNVML:
    def __init__(self, fail: bool = False):
        self.fail = fail

    def nvmlInit(self):
        if self.fail:
            raise RuntimeError("Driver Not Loaded")

    def nvmlSystemGetDriverVersion(self):
        return b"999.99"

    def nvmlDeviceGetCount(self):
        return 3


def test_resolve_device_and_sync_on_this_machine():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.resolve_device("auto").type == want and device.resolve_device("cpu") == torch.device("cpu")
    device.sync(torch.device("cpu"))  # nothing to wait for; must not fail
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device = 'cuda:1'"):
            device.resolve_device("cuda:1")


def test_nvml_queries_answer_none_without_a_driver():
    assert device.nvidia_driver(FakeNVML()) == "999.99" and device.gpu_count(FakeNVML()) == 3
    for absent in (None, FakeNVML(fail=True)):
        assert device.load_nvml(absent) is None
        assert device.nvidia_driver(absent) is None and device.gpu_count(absent) == 0


def test_gpu_slots_count_gpus_through_nvml(monkeypatch):
    monkeypatch.delenv("BPFREE_GPUS", raising=False)
    monkeypatch.setattr(device, "load_nvml", lambda nvml="auto": FakeNVML())
    assert gpuslots.gpus() == ["0", "1", "2"]


def test_one_definition_of_each():
    """sync, resolve_device, check_device and nvmlInit live in device.py only; the driver is asked once."""
    for path in SRC.rglob("*.py"):
        if path.name == "device.py":
            continue
        code = path.read_text()
        for pattern in (r"def (sync|resolve_device|check_device)\(", r"nvmlInit\(", r"driver_version",
                        r"nvmlSystemGetDriverVersion"):
            assert not re.search(pattern, code), (path.name, pattern)
