"""The networks of algorithms.md, built from an architecture entry of the config."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
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


# Options of an `mlp` entry beyond its widths, at the values that give the plain network
# [Linear -> ReLU] x L. Another value builds Nøkland and Eidnes' (2019) hidden layer,
# Linear -> [BatchNorm1d] -> activation -> [Dropout]; only algorithms that list the option in
# their ARCH_OPTIONS accept it (bpfree.algorithms.base.check_architecture).
MLP_OPTIONS = {"activation": "relu", "batchnorm": False, "dropout": 0.0}
ACTIVATIONS = ("relu", "leaky_relu")
LEAKY_SLOPE = 0.01  # Nøkland and Eidnes' LeakyReLU (local-loss code, LocalLossBlockLinear)


def mlp_options(arch: dict) -> dict:
    """The options (MLP_OPTIONS) of an mlp entry, unset ones at the plain network's values;
    ValueError for a value the schema would refuse (an entry built by hand)."""
    opts = {**MLP_OPTIONS, **{k: arch[k] for k in MLP_OPTIONS if k in arch}}
    if opts["activation"] not in ACTIVATIONS:
        raise ValueError(f"activation = {opts['activation']!r}: one of {', '.join(ACTIVATIONS)}")
    if not isinstance(opts["batchnorm"], bool):
        raise ValueError(f"batchnorm = {opts['batchnorm']!r}: true or false")
    if not 0.0 <= opts["dropout"] < 1.0:
        raise ValueError(f"dropout = {opts['dropout']!r}: a rate in [0, 1)")
    return opts


def activation(name: str) -> nn.Module:
    """The activation module of an mlp option value ("relu" or "leaky_relu", slope LEAKY_SLOPE)."""
    return nn.LeakyReLU(LEAKY_SLOPE) if name == "leaky_relu" else nn.ReLU()


class MLP(nn.Module):
    """[Linear -> ReLU] x L, then Linear(d_L, C). With the options of an mlp entry
    (`mlp_options`): every hidden layer Linear -> [BatchNorm1d] -> activation -> [Dropout], the
    order of Nøkland and Eidnes' blocks; at their defaults the network, its parameters and its
    state_dict are the plain one's."""

    def __init__(self, widths: list[int], n_classes: int, activation: str = "relu", batchnorm: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.hidden = nn.ModuleList(hidden_linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], n_classes)
        nn.init.zeros_(self.head.bias)
        self.slope = LEAKY_SLOPE if activation == "leaky_relu" else None
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in widths[1:]) if batchnorm else None
        self.drop = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = torch.relu(x) if self.slope is None else F.leaky_relu(x, self.slope)
            if self.drop is not None:
                x = self.drop(x)
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


# ---- the channel-wise competitive CNN (Papachristodoulou et al. 2024, CwComp) -----------------------

def cwc_layout(arch: dict) -> list[tuple[int, bool, int]]:
    """(channels, pools, groups) of every layer of a `cwc-cnn` entry: `pool` (booleans, default
    every second layer, as the paper's code: layers 2, 4, ...) and `groups` (default 1; the
    paper's CFSE network groups the pooling layers by the number of classes). ValueError when
    the lists do not match `channels` or a layer's channels are not divisible by its groups."""
    ch = list(arch["channels"])
    pool = list(arch.get("pool") or [k % 2 == 1 for k in range(len(ch))])
    groups = list(arch.get("groups") or [1] * len(ch))
    for key, v in (("pool", pool), ("groups", groups)):
        if len(v) != len(ch):
            raise ValueError(f"{key} has {len(v)} entries but channels has {len(ch)}")
    ins = [None, *ch[:-1]]
    for k, (c_in, c, g) in enumerate(zip(ins, ch, groups)):
        if c % g or (c_in is not None and c_in % g):
            raise ValueError(f"layer {k + 1}: groups = {g} must divide its input and output channels "
                             f"({c_in if c_in is not None else 'image'}, {c})")
    return list(zip(ch, pool, groups))


def cwc_layer(c_in: int, c_out: int, pool: bool, groups: int = 1) -> nn.Sequential:
    """CwComp layer, as the paper's code: Conv2d(3x3, stride 1, pad 1, bias, `groups`; torch's
    default init) -> ReLU -> [MaxPool(2)] -> BatchNorm2d(eps 1e-4)."""
    conv = nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, groups=groups)
    return nn.Sequential(conv, nn.ReLU(), *([nn.MaxPool2d(2)] if pool else []), nn.BatchNorm2d(c_out, eps=1e-4))


def cwc_shapes(arch: dict, shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(C, H, W) of the input and of every layer's output of a `cwc-cnn` entry."""
    c, h, w = shape
    out = [(c, h, w)]
    for ch, pool, _ in cwc_layout(arch):
        if pool:
            h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(f"input {tuple(shape)} is too small for the pooling layers of {arch['channels']}")
        out.append((ch, h, w))
    return out


def cwc_layer_macs(arch: dict, shape: tuple[int, ...]) -> list[int]:
    """Multiply-adds per sample of each layer's convolution (ReLU, pooling, BatchNorm not counted):
    the convolution runs at its input's resolution (padding 1), a grouped one on c_in / groups
    input channels per output channel."""
    s = cwc_shapes(arch, shape)
    return [9 * (s[k][0] // g) * s[k + 1][0] * s[k][1] * s[k][2] for k, (_, _, g) in enumerate(cwc_layout(arch))]


def cwc_layers(arch: dict, shape: tuple[int, ...]) -> nn.ModuleList:
    """The layers of a `cwc-cnn` entry (no head)."""
    ins = [shape[0], *arch["channels"][:-1]]
    return nn.ModuleList(cwc_layer(a, c, p, g) for a, (c, p, g) in zip(ins, cwc_layout(arch)))


class CwCCNN(nn.Module):
    """The CwComp layers trained end to end, then Flatten -> Linear(flat, C) (the paper's softmax
    classifier on the last layer)."""

    def __init__(self, arch: dict, shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.layers = cwc_layers(arch, shape)
        self.head = nn.Linear(math.prod(cwc_shapes(arch, shape)[-1]), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x.flatten(1))


# ---- the registry: one record per architecture type ---------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """One architecture type of the config's `architectures` entries (`type: NAME`).

    layers:   the key listing its layers' sizes ("widths" or "channels"), required by the config check.
    build:    (entry, input shape (C, H, W), n_classes) -> the end-to-end network (what `bp` trains).
    macs:     (entry, shape, n_classes) -> forward multiply-adds per sample of that network.
    first:    (entry, shape) -> forward multiply-adds of its first layer (whose input gradient is
              never needed).
    options:  further keys only this type takes (the schema lists them; the check refuses them on
              other types).
    validate: (entry) -> None, ValueError for an entry the schema cannot refuse; None: nothing to check.
    variants: the options that change the network's layers, with the value that leaves the plain
              network: an algorithm builds another value only if it lists the key in its
              ARCH_OPTIONS (`variant_keys`, bpfree.algorithms.base.check_architecture).
    """

    name: str
    layers: str
    build: Callable[[dict, tuple[int, ...], int], nn.Module]
    macs: Callable[[dict, tuple[int, ...], int], int]
    first: Callable[[dict, tuple[int, ...]], int]
    options: tuple[str, ...] = ()
    validate: Callable[[dict], object] | None = None
    variants: Mapping[str, object] = field(default_factory=dict)


REGISTRY: dict[str, Architecture] = {a.name: a for a in (
    Architecture("mlp", "widths",
                 build=lambda arch, shape, n: MLP(mlp_widths(arch, shape), n, **mlp_options(arch)),
                 macs=lambda arch, shape, n: mlp_macs(mlp_widths(arch, shape), n),
                 first=lambda arch, shape: in_features(shape) * arch["widths"][0],
                 options=tuple(MLP_OPTIONS), validate=mlp_options, variants=MLP_OPTIONS),
    Architecture("cnn", "channels",
                 build=lambda arch, shape, n: CNN(arch["channels"], shape, n),
                 macs=lambda arch, shape, n: (sum(cnn_block_macs(arch["channels"], shape))
                                              + cnn_flat(arch["channels"], shape)[-1] * n),
                 first=lambda arch, shape: cnn_block_macs(arch["channels"], shape)[0]),
    Architecture("cwc-cnn", "channels",
                 build=lambda arch, shape, n: CwCCNN(arch, shape, n),
                 macs=lambda arch, shape, n: (sum(cwc_layer_macs(arch, shape))
                                              + math.prod(cwc_shapes(arch, shape)[-1]) * n),
                 first=lambda arch, shape: cwc_layer_macs(arch, shape)[0],
                 options=("pool", "groups"), validate=cwc_layout),
)}


def architecture(arch: dict) -> Architecture:
    """The registry record of an architecture entry; ValueError for an unknown type."""
    try:
        return REGISTRY[arch["type"]]
    except KeyError:
        raise ValueError(f"unknown architecture type {arch['type']!r}; known: {', '.join(REGISTRY)}") from None


def check(arch: dict) -> None:
    """ValueError (without the entry's name) for an entry its type cannot build: the layers key
    missing, another type's option, or what the type's own `validate` refuses."""
    record = architecture(arch)
    if record.layers not in arch:
        raise ValueError(f"type {record.name} needs `{record.layers}`")
    owner = {key: other.name for other in REGISTRY.values() for key in other.options if key not in record.options}
    foreign = sorted(set(owner) & set(arch))
    if foreign:
        raise ValueError(f"`{foreign[0]}` is a {owner[foreign[0]]} key, not one of type {record.name}")
    if record.validate is not None:
        record.validate(arch)


def variant_keys(arch: dict) -> list[str]:
    """The options of an entry that are set to another value than the plain network's (its type's
    `variants`), in the order the type declares them."""
    return [k for k, plain in architecture(arch).variants.items() if k in arch and arch[k] != plain]


def build(arch: dict, shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The end-to-end network for an architecture entry (what `bp` trains)."""
    return architecture(arch).build(arch, shape, n_classes)


def build_macs(arch: dict, shape: tuple[int, ...], n_classes: int) -> int:
    """Forward multiply-adds per sample of `build(arch, ...)`."""
    return architecture(arch).macs(arch, shape, n_classes)


def first_layer_macs(arch: dict, shape: tuple[int, ...]) -> int:
    """Forward multiply-adds of the first layer (its input gradient is never needed)."""
    return architecture(arch).first(arch, shape)
