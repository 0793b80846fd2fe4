"""Every algorithm declares its settings and its locality, and a test checks the locality it claims.

The declarations are checked for every shipped algorithm; `LOCALITY_TESTS` names, per algorithm,
the test that checks its claim, so a new algorithm cannot ship without one.
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

# algorithm implementation -> the tests that check its locality claim ("file::function")
LOCALITY_TESTS = {
    "bp": ["test_locality.py::test_bp_first_layer_gradient_depends_on_every_layer_above"],
    "mf": ["test_algorithms.py::test_mf_no_gradient_crosses_a_layer_boundary"],
    "ff": ["test_ff.py::test_each_layer_loss_sends_no_gradient_to_earlier_layers"],
    "cafo": ["test_cafo.py::test_dfa_gradients_of_blocks_1_2_come_only_from_feedback_matrices",
             "test_cafo.py::test_rand_blocks_stay_at_random_init_and_batchnorm_is_identity"],
    "elm": ["test_locality.py::test_elm_computes_no_gradient"],
    "cwcomp": ["test_cwcomp.py::test_no_gradient_of_a_layer_loss_reaches_an_earlier_layer"],
    "fa": ["test_fa_dfa.py::test_fa_error_reaches_a_layer_only_through_the_B_above_it"],
    "dfa": ["test_fa_dfa.py::test_dfa_no_gradient_passes_between_layers"],
    "local": ["test_local.py::test_no_gradient_of_a_layer_loss_reaches_an_earlier_layer"],
    "pepita": ["test_pepita.py::test_no_backward_pass_and_each_update_is_local_to_its_layer",
               "test_pepita.py::test_one_step_matches_the_paper"],
    "fwdgrad": ["test_fwdgrad.py::test_no_backward_in_the_training_step",
                "test_fwdgrad.py::test_local_losses_send_no_signal_to_earlier_layers"],
}


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
    assert impl in LOCALITY_TESTS, f"{impl}: name the test that checks its locality in LOCALITY_TESTS"
    for ref in LOCALITY_TESTS[impl]:
        file, func = ref.split("::")
        tree = ast.parse((TESTS / file).read_text())
        assert func in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, ref


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


def test_elm_computes_no_gradient(digits):
    algo = algorithms.get("elm")({"type": "mlp", "widths": [32]}, digits.meta, {"ridge": 1e-3}, "cpu")
    assert not any(p.requires_grad for p in algo.net.parameters())
    hidden = algo.net.hidden[0].weight.clone()
    algo.train_epoch(algo.stages()[0], digits, torch.Generator().manual_seed(0))
    assert torch.equal(algo.net.hidden[0].weight, hidden)  # random features stay as drawn
