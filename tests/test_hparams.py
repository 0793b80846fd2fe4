"""The declaration machinery itself: shared names, required settings, declared defaults."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from bpfree import algorithms, hparams
from bpfree.errors import ConfigError


def test_a_shared_name_given_a_doc_stays_required():
    """Regression: `hparams.lr("doc")` once made the doc the default, so lr was silently optional."""
    @dataclass(frozen=True, kw_only=True)
    class S(hparams.Settings):
        lr: float = hparams.lr("Adam learning rate of every layer")
        batch_size: int = hparams.batch_size("examples per step")

    f = hparams.fields(S)
    assert f["lr"].required and f["batch_size"].required
    assert f["lr"].decl.doc == "Adam learning rate of every layer"
    with pytest.raises(ConfigError, match=r"hyperparameters\.lr: required"):
        hparams.parse(S, {"batch_size": 8})


def test_a_declared_default_must_be_a_legal_value():
    @dataclass(frozen=True, kw_only=True)
    class S(hparams.Settings):
        lr: float = hparams.hp("0.1", doc="a string where a number belongs")

    with pytest.raises(ConfigError, match=r"S\.lr \(its declared default\) = '0\.1'"):
        hparams.fields(S)


@pytest.mark.parametrize("impl", algorithms.available())
def test_every_shipped_learning_rate_is_required_or_explicitly_optional(impl):
    for f in hparams.fields(algorithms.get(impl).Settings).values():
        if f.decl.meaning == "lr":
            assert f.required or f.default is None, f"{impl}.{f.name} defaults to {f.default!r}"


def test_described_defaults_are_spelt_as_in_a_config_file():
    """Regression: `bpfree settings ff` printed `default None` and `default 'goodness'`, Python's
    spelling, where a config writes null and goodness."""
    lines = {line.split(" ", 1)[0]: line for line in hparams.describe(algorithms.get("ff").Settings)}
    assert "default null" in lines["downstream_lr"]
    assert "default goodness" in lines["predict"]
    assert not any("None" in line or "'" in line.split(":")[0] for line in lines.values())
