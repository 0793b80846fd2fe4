"""Declared hyperparameters: each algorithm says which settings it takes, their type, range or
choices, default and meaning; the config check refuses everything else before any job runs.

An algorithm module declares its settings as a frozen, keyword-only dataclass whose fields are made
by `hp(...)`, or by one of the shared names below (`lr`, `batch_size`, `weight_decay`, `l2`), which
give a name the same meaning in every algorithm:

    @dataclass(frozen=True, kw_only=True)
    class Settings(hparams.Settings):
        lr: float = hparams.lr()
        batch_size: int = hparams.batch_size()
        mode: str = hp("greedy", choices=("greedy", "simultaneous"), doc="layer by layer or all at once")

A field without a default is required (fixed or searched); `float | None` admits null. The
algorithm receives `parse(Settings, values)`: typed and complete, or a ConfigError naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any

from bpfree.errors import ConfigError

REQUIRED: Any = MISSING
TYPE_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Declared:
    """What one setting accepts. Bounds are inclusive unless `low_open`/`high_open`."""

    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    unit: str = ""
    meaning: str | None = None  # the shared name whose meaning this field carries (see below)


def hp(default: Any = REQUIRED, *, doc: str, low: float | None = None, high: float | None = None,
       low_open: bool = False, high_open: bool = False, choices: tuple | None = None, unit: str = "",
       meaning: str | None = None) -> Any:
    """A declared setting (a dataclass field whose metadata is its `Declared`)."""
    decl = Declared(doc, low, high, low_open, high_open, tuple(choices) if choices else None, unit, meaning)
    return field(default=default, metadata={"hp": decl})


# ---- shared names: one meaning each, whatever the algorithm ----------------------------------------

def lr(doc: str = "learning rate of the optimiser", *, default: Any = REQUIRED) -> Any:
    return hp(default, low=0.0, low_open=True, doc=doc, meaning="lr")


def batch_size(doc: str = "training examples per optimiser step", *, default: Any = REQUIRED) -> Any:
    return hp(default, low=1, unit="examples", doc=doc, meaning="batch_size")


def weight_decay(doc: str = "decoupled weight decay (AdamW): w <- w - lr * wd * w", *, default: Any = 0.0) -> Any:
    """Decoupled weight decay (Loshchilov and Hutter 2019, AdamW): w <- w - lr * wd * w, applied
    beside the optimiser's step, not through the gradient."""
    return hp(default, low=0.0, doc=doc, meaning="weight_decay")


def l2(doc: str = "L2 penalty added to the gradient (g + l2 * w)", *, default: Any = 0.0) -> Any:
    """L2 penalty: l2 * w added to the gradient before the optimiser's step (what torch's Adam and
    SGD call `weight_decay`); under Adam it is rescaled per weight, so it is not decoupled decay."""
    return hp(default, low=0.0, doc=doc, meaning="l2")


SHARED = ("lr", "batch_size", "weight_decay", "l2")

# Keys that are not any algorithm's to set, with the place they belong.
PROTOCOL_KEYS = {"seed", "seeds", "stopping", "max_epochs", "patience", "min_delta", "n_trials", "sampler_seed",
                 "pruner", "split", "limit_train"}


class SettingError(ValueError):
    """A rule between settings is broken (raised by `Settings.check`); `key` names the setting."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def check_decay(s: Settings, optimizer: str, decoupled: bool, weight_decay: tuple[str, ...] = ("weight_decay",),
                l2: tuple[str, ...] = ("l2",)) -> None:
    """The rule of every algorithm with a choice of optimiser: one with decoupled decay (AdamW) applies
    the `weight_decay` settings, one with an L2 penalty (Adam, SGD) the `l2` settings; a nonzero
    setting of the other kind is refused (SettingError naming it): it would be silently ignored."""
    takes = "decoupled decay: weight_decay" if decoupled else "an L2 penalty: l2"
    for name in l2 if decoupled else weight_decay:
        if getattr(s, name):
            raise SettingError(name, f"optimizer {optimizer} does not apply {name} (it takes {takes})")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Base of every algorithm's declared settings."""

    def check(self) -> None:
        """Rules between settings (override; raise SettingError naming the key)."""

    def optimizer_label(self) -> str:
        """Which optimiser and which decay the algorithm runs with these settings (for best.json,
        metrics.json and the report)."""
        raise NotImplementedError

    def asdict(self) -> dict:
        return dataclasses.asdict(self)


def _yaml(value: Any) -> str:
    """A value as a config file spells it (null, true, adam), not as Python prints it."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


@dataclass(frozen=True)
class Field:
    name: str
    type: type
    nullable: bool
    decl: Declared
    default: Any

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        """One line: type, range or choices, default, unit, meaning (for errors and the docs)."""
        kind = self.type.__name__ + (" or null" if self.nullable else "")
        d = self.decl
        if d.choices:
            kind += f", one of {', '.join(map(str, d.choices))}"
        elif d.low is not None or d.high is not None:
            lo = "(" if d.low_open else "["
            hi = ")" if d.high_open else "]"
            kind += f" in {lo}{_fmt(d.low, '-inf')}, {_fmt(d.high, 'inf')}{hi}"
        default = "required" if self.required else f"default {_yaml(self.default)}"
        unit = f" {d.unit}," if d.unit else ""
        return f"{self.name} ({kind},{unit} {default}): {d.doc}"


def _fmt(v: float | None, none: str) -> str:
    return none if v is None else f"{v:g}"


def fields(cls: type[Settings]) -> dict[str, Field]:
    """The declared settings of `cls`, by name."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "hp" not in f.metadata:
            raise TypeError(f"{cls.__qualname__}.{f.name} is not declared with hparams.hp(...)")
        t, nullable = hints[f.name], False
        if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
            args = [a for a in typing.get_args(t) if a is not type(None)]
            t, nullable = args[0], len(args) < len(typing.get_args(t))
        if t not in TYPE_NAMES:
            raise TypeError(f"{cls.__qualname__}.{f.name}: settings are float, int, str or bool, not {t}")
        out[f.name] = Field(f.name, t, nullable, f.metadata["hp"], f.default)
        if f.default is not REQUIRED:  # a declaration's own default must be a legal value
            check_value(f"{cls.__qualname__}.{f.name} (its declared default)", out[f.name], f.default)
    return out


def check_value(key: str, f: Field, v: Any) -> Any:
    """`v` as the declared type of `f`, or ConfigError naming `key` and the value."""
    if v is None:
        if f.nullable:
            return None
        raise ConfigError(f"{key} = null: expected {TYPE_NAMES[f.type]}")
    ok = isinstance(v, f.type) and not (f.type is int and isinstance(v, bool))
    if f.type is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if not ok:
        raise ConfigError(f"{key} = {v!r} ({type(v).__name__}): expected {TYPE_NAMES[f.type]}")
    if f.type is float:
        v = float(v)
        if not math.isfinite(v):
            raise ConfigError(f"{key} = {v}: expected a finite number")
    d = f.decl
    if d.choices is not None and v not in d.choices:
        raise ConfigError(f"{key} = {v!r}: not one of {', '.join(map(repr, d.choices))}"
                          + _did_you_mean(str(v), map(str, d.choices)))
    if d.low is not None and (v < d.low or (d.low_open and v == d.low)):
        raise ConfigError(f"{key} = {v!r}: must be {'>' if d.low_open else '>='} {d.low:g}")
    if d.high is not None and (v > d.high or (d.high_open and v == d.high)):
        raise ConfigError(f"{key} = {v!r}: must be {'<' if d.high_open else '<='} {d.high:g}")
    return v


def _did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(key: str, name: str, declared: dict[str, Field]) -> ConfigError:
    if name in PROTOCOL_KEYS:
        return ConfigError(f"{key}: {name!r} belongs under protocol (the same for every algorithm), "
                           "not to one algorithm's fixed settings or search space")
    hint = _did_you_mean(name, declared)
    if name == "weight_decay" and "l2" in declared:
        hint = " (weight_decay means decoupled decay; this algorithm's optimiser takes an L2 penalty: `l2`)"
    elif name == "l2" and "weight_decay" in declared:
        hint = " (this algorithm's optimiser takes decoupled decay: `weight_decay`)"
    return ConfigError(f"{key}: unknown setting{hint}; declared: {', '.join(declared)}")


def parse(cls: type[Settings], values: Mapping[str, Any],
          where: str | Callable[[str], str] = "hyperparameters") -> Settings:
    """Typed, complete settings from `values`, or ConfigError naming `<where>.<key>`: unknown or
    misspelt keys, wrong types, values out of range, missing required ones, broken rules.
    `where` is the key path's prefix, or a function giving a setting's whole path."""
    path = where if callable(where) else (lambda name: f"{where}.{name}")
    declared = fields(cls)
    for name in values:
        if name not in declared:
            raise _unknown(path(name), name, declared)
    out = {}
    for name, f in declared.items():
        if name in values:
            out[name] = check_value(path(name), f, values[name])
        elif f.required:
            raise ConfigError(f"{path(name)}: required ({f.decl.doc}) but not given")
    settings = cls(**out)
    try:
        settings.check()
    except SettingError as e:
        raise ConfigError(f"{path(e.key)} = {values.get(e.key, out.get(e.key))!r}: {e}") from None
    return settings


SPACE_TYPES = {float: ("float", "int", "categorical"), int: ("int", "categorical"), str: ("categorical",),
               bool: ("categorical",)}


def check_entry(cls: type[Settings], entry: Mapping[str, Any], where: str, searched: bool) -> None:
    """Validate an algorithm entry of the config (`fixed`, `space`) against the declaration.
    `searched`: the study runs (protocol.search.n_trials > 0), so the space supplies values."""
    declared = fields(cls)
    fixed, space = entry.get("fixed") or {}, entry.get("space") or {}
    for part, keys in (("fixed", fixed), ("space", space)):
        for name in keys:
            if name not in declared:
                raise _unknown(f"{where}.{part}.{name}", name, declared)
    for name, v in fixed.items():
        check_value(f"{where}.fixed.{name}", declared[name], v)
    for name, p in space.items():
        _check_space(f"{where}.space.{name}", declared[name], p)
    for name in sorted(set(fixed) & set(space)):
        raise ConfigError(f"{where}: {name!r} is both fixed and searched; keep one")
    for name, f in declared.items():
        if f.required and name not in fixed and not (searched and name in space):
            why = (" (protocol.search.n_trials = 0 runs no search: give it under fixed)" if name in space
                   else "")
            raise ConfigError(f"{where}: {name!r} is required ({f.decl.doc}) but neither fixed nor "
                              f"searched{why}")
    space = space if searched else {}
    for values in _probes(fixed, space):
        drawn = {k: v for k, v in values.items() if k in space}
        try:
            parse(cls, values, lambda name: f"{where}.{'space' if name in space else 'fixed'}.{name}")
        except ConfigError as e:
            if not drawn:
                raise
            draws = ", ".join(f"{k} = {v!r}" for k, v in drawn.items())
            raise ConfigError(f"{e} (when the search draws {draws})") from None


def _check_space(key: str, f: Field, p: Mapping[str, Any]) -> None:
    kind = p.get("type", "float")
    if kind not in SPACE_TYPES[f.type]:
        raise ConfigError(f"{key}.type = {kind!r}: {f.name} is {TYPE_NAMES[f.type]}; search it as "
                          f"{' or '.join(SPACE_TYPES[f.type])}")
    if kind == "categorical":
        for i, c in enumerate(p.get("choices") or []):
            check_value(f"{key}.choices[{i}]", f, c)
        return
    as_int = dataclasses.replace(f, type=int) if kind == "int" else f
    for bound in ("low", "high"):
        if bound not in p:
            raise ConfigError(f"{key}: a {kind} search range needs `{bound}`")
        check_value(f"{key}.{bound}", as_int, p[bound])
    if p["low"] > p["high"]:
        raise ConfigError(f"{key}.low = {p['low']} is above {key}.high = {p['high']}")
    if p.get("log") and p["low"] <= 0:
        raise ConfigError(f"{key}.low = {p['low']}: a log-scale range must start above 0")
    step = p.get("step")
    if step is not None:  # Optuna would only warn in a job's log, and search what remains
        if p.get("log"):
            raise ConfigError(f"{key}.step = {step}: a log-scale range takes no step")
        if kind == "int" and not float(step).is_integer():
            raise ConfigError(f"{key}.step = {step}: an int range takes a whole step")
        width = p["high"] - p["low"]
        if step > width > 0:
            raise ConfigError(f"{key}.step = {step} is wider than the range {p['low']}..{p['high']}: "
                              "the search would try only the low bound")
        if width > 0 and not math.isclose(width / step, round(width / step), abs_tol=1e-9):
            raise ConfigError(f"{key}.step = {step} does not divide the range {p['low']}..{p['high']}: "
                              "the search would never reach the high bound")


def _probes(fixed: Mapping[str, Any], space: Mapping[str, Any]) -> Iterator[dict]:
    """Points that exercise the rules between settings: the fixed values with every searched
    setting at its first choice or low bound, then each choice and each high bound in turn."""
    def first(p):
        return p["choices"][0] if p.get("type") == "categorical" else p["low"]

    base = {**fixed, **{k: first(p) for k, p in space.items()}}
    yield base
    for k, p in space.items():
        for v in (p["choices"][1:] if p.get("type") == "categorical" else [p["high"]]):
            yield {**base, k: v}


def describe(cls: type[Settings]) -> list[str]:
    """One line per declared setting (for the docs and error messages)."""
    return [f.describe() for f in fields(cls).values()]
