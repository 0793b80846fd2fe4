"""The 3-block CNN of algorithms.md and bp trained end to end on it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bpfree import models
from bpfree.algorithms.base import Stage, accuracy
from bpfree.algorithms.bp import BP
from bpfree.data import load
from bpfree.datasets import prepare
from bpfree.engine import Stopping, fit

CHANNELS = [32, 128, 512]


@pytest.mark.parametrize("shape, sizes", [
    ((1, 8, 8), [4, 2, 1]),
    ((1, 28, 28), [14, 7, 3]),
    ((3, 32, 32), [16, 8, 4]),
])
def test_cnn_shapes(shape, sizes):
    net = models.build({"type": "cnn", "channels": CHANNELS}, shape, 10).eval()
    h = torch.randn(2, *shape)
    for block, ch, s in zip(net.blocks, CHANNELS, sizes):
        h = block(h)
        assert h.shape == (2, ch, s, s)
    assert net(torch.randn(2, *shape)).shape == (2, 10)
    assert models.cnn_flat(CHANNELS, shape) == [c * s * s for c, s in zip(CHANNELS, sizes)]


def test_block_layout_and_macs():
    block = models.conv_block(1, 32)
    conv, relu, pool, bn = block
    assert isinstance(conv, torch.nn.Conv2d) and conv.bias is None
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(relu, torch.nn.ReLU) and isinstance(pool, torch.nn.MaxPool2d)
    assert isinstance(bn, torch.nn.BatchNorm2d)
    bound = (6 / 9) ** 0.5  # Kaiming uniform, ReLU gain: sqrt(6 / fan_in), fan_in = 1 * 3 * 3
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.8 * bound
    macs = models.cnn_block_macs(CHANNELS, (1, 28, 28))
    assert macs == [9 * 1 * 32 * 28 * 28, 9 * 32 * 128 * 14 * 14, 9 * 128 * 512 * 7 * 7]
    arch = {"type": "cnn", "channels": CHANNELS}
    assert models.build_macs(arch, (1, 28, 28), 10) == sum(macs) + 512 * 3 * 3 * 10
    assert models.first_layer_macs(arch, (1, 28, 28)) == macs[0]


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        models.cnn_shapes([8, 8, 8, 8], (1, 8, 8))


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.pt"
    prepare("digits", None, path)
    return path


def test_bp_cnn_learns_digits(digits):
    torch.manual_seed(0)
    data = load(digits)
    algo = BP({"type": "cnn", "channels": [16, 32, 64]}, data.meta, {"batch_size": 128, "lr": 3e-3,
                                                                     "weight_decay": 1e-4}, "cpu")
    fit(algo, data, Stopping(max_epochs=15, patience=5), seed=0)
    assert accuracy(algo.predict(data.x_test), data.y_test) > 85.0
    cost = algo.cost(Stage("all"))
    fwd = algo.predict_macs()
    assert cost.train == 3 * fwd - models.cnn_block_macs([16, 32, 64], (1, 8, 8))[0]
