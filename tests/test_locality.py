"""Every algorithm declares its settings and its locality, and a test checks the locality it claims.

The declarations are checked for every shipped algorithm; the test that checks an algorithm's
claim carries `@pytest.mark.locality("<impl>")` (found by `locality_tests`), so a new algorithm
cannot ship without one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import yaml

from bpfree import algorithms, hparams
from bpfree.localities import LOCALITIES
from bpfree.config import SCHEMA

TESTS = Path(__file__).parent
ARCH_TYPES = set(yaml.safe_load(SCHEMA.read_text())["properties"]["architectures"]["additionalProperties"]
                 ["properties"]["type"]["enum"])



def locality_tests() -> dict[str, list[str]]:
    """algorithm implementation -> the tests that check its locality claim ("file::function"): every
    test function of tests/ marked `@pytest.mark.locality("<impl>")`, found in the source (derived,
    so that a new algorithm's test registers itself)."""
    out: dict[str, list[str]] = {}
    for f in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef):
                for d in node.decorator_list:
                    if (isinstance(d, ast.Call) and ast.unparse(d.func) == "pytest.mark.locality" and d.args
                            and isinstance(d.args[0], ast.Constant)):
                        out.setdefault(d.args[0].value, []).append(f"{f.name}::{node.name}")
    return out


@pytest.mark.parametrize("impl", algorithms.available())
def test_algorithm_declares_settings_locality_and_architectures(impl):
    cls = algorithms.get(impl)
    assert issubclass(cls.Settings, hparams.Settings) and cls.Settings is not hparams.Settings
    hparams.fields(cls.Settings)  # every field declared with hparams.hp, types float/int/str/bool
    assert cls.LOCALITY in LOCALITIES, cls.LOCALITY
    assert cls.ARCHITECTURES and set(cls.ARCHITECTURES) <= ARCH_TYPES


@pytest.mark.parametrize("impl", algorithms.available())
def test_shared_names_keep_their_one_meaning(impl):
    """lr, batch_size, weight_decay (decoupled) and l2 (penalty through the gradient) mean the same
    in every algorithm: a setting named so, or ending so (dfa_l2, downstream_weight_decay), is
    declared with the shared constructor."""
    for f in hparams.fields(algorithms.get(impl).Settings).values():
        for name in hparams.SHARED:
            if f.name == name or f.name.endswith("_" + name):
                assert f.decl.meaning == name, f"{impl}.{f.name} must be declared with hparams.{name}()"


@pytest.mark.parametrize("impl", algorithms.available())
def test_every_algorithm_has_a_locality_test(impl):
    assert locality_tests().get(impl), (f"{impl}: mark the test that checks its locality claim with "
                                        f'@pytest.mark.locality("{impl}") (docs/adding-an-algorithm.md)')


def test_locality_marks_name_shipped_algorithms():
    """A mark with a misspelt name would leave its algorithm unchecked while looking done."""
    assert set(locality_tests()) <= set(algorithms.available())
    assert len(locality_tests()["pepita"]) == 2  # found where they are, decorators stacked or not


@pytest.mark.locality("bp")
def test_bp_first_layer_gradient_depends_on_every_layer_above():
    """end-to-end: the first layer's gradient is the exact chain through every layer, so changing
    the head's weights changes it (unlike a layer-local rule)."""
    torch.manual_seed(0)
    meta = {"n_classes": 3, "shape": [5]}
    algo = algorithms.get("bp")({"type": "mlp", "widths": [4, 4]}, meta, {"lr": 1e-3, "batch_size": 8}, "cpu")
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))

    def first_grad():
        algo.net.zero_grad()
        F.cross_entropy(algo.net(x), y).backward()
        return algo.net.hidden[0].weight.grad.clone()

    g = first_grad()
    with torch.no_grad():
        algo.net.head.weight.mul_(2.0)
    assert not torch.allclose(first_grad(), g)


@pytest.mark.locality("elm")
def test_elm_computes_no_gradient(digits):
    algo = algorithms.get("elm")({"type": "mlp", "widths": [32]}, digits.meta, {"ridge": 1e-3}, "cpu")
    assert not any(p.requires_grad for p in algo.net.parameters())
    hidden = algo.net.hidden[0].weight.clone()
    algo.train_epoch(algo.stages()[0], digits, torch.Generator().manual_seed(0))
    assert torch.equal(algo.net.hidden[0].weight, hidden)  # random features stay as drawn
