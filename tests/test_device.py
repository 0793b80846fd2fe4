"""bpfree.device: the one home of device selection, synchronisation and the NVIDIA driver (NVML)."""
from __future__ import annotations

import os
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


@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    """Two fake GPUs of two slots each, their locks in a temporary folder."""
    monkeypatch.setenv("BPFREE_GPUS", "0,1")
    monkeypatch.setenv("BPFREE_GPU_SLOTS", "2")
    monkeypatch.setenv("BPFREE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpuslots, "_held", [])
    yield gpuslots.gpus()
    for fd in gpuslots._held:
        os.close(fd)


def test_search_workers_pack_two_to_a_gpu_and_a_final_run_takes_a_whole_one(two_gpus):
    workers = [gpuslots.take(two_gpus, 2, whole=False) for _ in range(4)]
    assert [g for g, _ in workers] == ["0", "0", "1", "1"]  # packed: 2 per device
    assert gpuslots.take(two_gpus, 2, whole=False) is None  # every slot taken
    assert gpuslots.take(two_gpus, 2, whole=True) is None
    os.close(workers[3][1][0])  # one worker on GPU 1 ends: GPU 1 is not wholly free yet
    assert gpuslots.take(two_gpus, 2, whole=True) is None
    os.close(workers[2][1][0])
    final = gpuslots.take(two_gpus, 2, whole=True)
    assert final[0] == "1" and len(final[1]) == 2  # all its slots: nothing else can join it
    assert gpuslots.take(two_gpus, 2, whole=False) is None
    os.close(workers[0][1][0])
    assert gpuslots.take(two_gpus, 2, whole=False)[0] == "0"  # a worker goes beside a worker, never beside a final run
    for fd in (*workers[1][1], *final[1]):
        os.close(fd)


def test_pin_sets_the_device_of_a_worker_and_of_a_final_run(two_gpus, monkeypatch):
    assert gpuslots.pin("auto", whole=True) == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpuslots.pin("auto") == "1"  # GPU 0 is the final run's
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpuslots.pin("auto") == "1" and len(gpuslots._held) == 4
    assert gpuslots.pin("cpu") is None and gpuslots.pin("auto") is None  # CUDA_VISIBLE_DEVICES is set now


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_slot_count_is_named(monkeypatch, value):
    monkeypatch.setenv("BPFREE_GPU_SLOTS", value)
    with pytest.raises(ConfigError, match=f"BPFREE_GPU_SLOTS = '{re.escape(value)}'"):
        gpuslots.slots()


def test_one_definition_of_each():
    """sync, resolve_device, check_device and nvmlInit live in device.py only; the driver is asked once."""
    for path in SRC.rglob("*.py"):
        if path.name == "device.py":
            continue
        code = path.read_text()
        for pattern in (r"def (sync|resolve_device|check_device)\(", r"nvmlInit\(", r"driver_version",
                        r"nvmlSystemGetDriverVersion"):
            assert not re.search(pattern, code), (path.name, pattern)
