"""The networks of algorithms.md, built from an architecture entry of the config."""
from __future__ import annotations

import math

import torch
from torch import nn


def hidden_linear(d_in: int, d_out: int) -> nn.Linear:
    """Linear layer with Kaiming-uniform (ReLU gain) weights and zero bias."""
    layer = nn.Linear(d_in, d_out)
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    return layer


def in_features(shape: tuple[int, ...] | list[int]) -> int:
    return math.prod(shape)


def mlp_widths(arch: dict, shape: tuple[int, ...]) -> list[int]:
    """[d_0, d_1, ..., d_L]: flattened input then hidden widths."""
    return [in_features(shape), *arch["widths"]]


class MLP(nn.Module):
    """[Linear -> ReLU] x L, then Linear(d_L, C)."""

    def __init__(self, widths: list[int], n_classes: int):
        super().__init__()
        self.hidden = nn.ModuleList(hidden_linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], n_classes)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


def mlp_macs(widths: list[int], n_classes: int) -> int:
    """Multiply-adds of one forward pass of MLP(widths, n_classes) for one sample."""
    dims = [*widths, n_classes]
    return sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """CaFo block: Conv2d(3x3, stride 1, pad 1, no bias; Kaiming-uniform, ReLU gain) -> ReLU ->
    MaxPool(2) -> BatchNorm2d."""
    conv = nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(c_out))


def cnn_shapes(channels: list[int], shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(C, H, W) of the input and of every block's output (pooling floors odd sizes: 7 -> 3)."""
    c, h, w = shape
    out = [(c, h, w)]
    for ch in channels:
        h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"input {tuple(shape)} is too small for {len(channels)} pooling blocks")
        out.append((ch, h, w))
    return out


def cnn_block_macs(channels: list[int], shape: tuple[int, ...]) -> list[int]:
    """Multiply-adds per sample of each block's convolution (pooling and BatchNorm not counted)."""
    s = cnn_shapes(channels, shape)
    return [9 * s[k][0] * s[k + 1][0] * s[k][1] * s[k][2] for k in range(len(channels))]


def cnn_flat(channels: list[int], shape: tuple[int, ...]) -> list[int]:
    """Flattened size of every block's output."""
    return [math.prod(s) for s in cnn_shapes(channels, shape)[1:]]


class CNN(nn.Module):
    """The CaFo blocks trained end to end, then Flatten -> Linear(flat, C)."""

    def __init__(self, channels: list[int], shape: tuple[int, ...], n_classes: int):
        super().__init__()
        ins = [shape[0], *channels[:-1]]
        self.blocks = nn.ModuleList(conv_block(a, b) for a, b in zip(ins, channels))
        self.head = nn.Linear(cnn_flat(channels, shape)[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x.flatten(1))


def build(arch: dict, shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The end-to-end network for an architecture entry (what `bp` trains)."""
    if arch["type"] == "mlp":
        return MLP(mlp_widths(arch, shape), n_classes)
    if arch["type"] == "cnn":
        return CNN(arch["channels"], shape, n_classes)
    raise ValueError(f"unknown architecture type {arch['type']!r}")


def build_macs(arch: dict, shape: tuple[int, ...], n_classes: int) -> int:
    """Forward multiply-adds per sample of `build(arch, ...)`."""
    if arch["type"] == "mlp":
        return mlp_macs(mlp_widths(arch, shape), n_classes)
    if arch["type"] == "cnn":
        return sum(cnn_block_macs(arch["channels"], shape)) + cnn_flat(arch["channels"], shape)[-1] * n_classes
    raise ValueError(f"unknown architecture type {arch['type']!r}")


def first_layer_macs(arch: dict, shape: tuple[int, ...]) -> int:
    """Forward multiply-adds of the first layer (its input gradient is never needed)."""
    if arch["type"] == "mlp":
        return in_features(shape) * arch["widths"][0]
    if arch["type"] == "cnn":
        return cnn_block_macs(arch["channels"], shape)[0]
    raise ValueError(f"unknown architecture type {arch['type']!r}")
