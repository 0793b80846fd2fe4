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


def build(arch: dict, shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The end-to-end network for an architecture entry (what `bp` trains)."""
    if arch["type"] == "mlp":
        return MLP(mlp_widths(arch, shape), n_classes)
    raise ValueError(f"unknown architecture type {arch['type']!r}")


def build_macs(arch: dict, shape: tuple[int, ...], n_classes: int) -> int:
    """Forward multiply-adds per sample of `build(arch, ...)`."""
    if arch["type"] == "mlp":
        return mlp_macs(mlp_widths(arch, shape), n_classes)
    raise ValueError(f"unknown architecture type {arch['type']!r}")
