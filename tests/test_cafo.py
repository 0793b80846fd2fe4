"""CaFo: cached frozen features, sparsemax loss, closed-form MSE predictor, DFA locality, learning."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bpfree.algorithms.base import Stage, accuracy
from bpfree.algorithms.cafo import CaFo, least_squares, sparsemax, sparsemax_loss
from bpfree.data import Data, load
from bpfree.datasets import prepare
from bpfree.engine import Stopping, fit

ARCH = {"type": "cnn", "channels": [4, 8, 16]}
HP = {"batch_size": 32, "lr": 1e-2, "l2": 0.0, "block": "rand", "loss": "ce"}
DFA = {"dfa_epochs": 1, "dfa_lr": 1e-3, "dfa_l2": 0.0}  # the DFA phase's settings (block dfa only)


def settings(**hp) -> dict:
    """HP with `hp` on top; the DFA phase's settings where block is dfa, no lr or l2 for the
    closed-form mse predictor (cafo refuses settings it would not use)."""
    out = {**HP, **(DFA if hp.get("block") == "dfa" else {}), **hp}
    if out["loss"] == "mse":
        out = {k: v for k, v in out.items() if k not in ("lr", "l2") or k in hp}
    return out


def random_data(n: int = 96, shape=(1, 8, 8), c: int = 10, augment: bool = False) -> Data:
    g = torch.Generator().manual_seed(0)
    x = lambda m: torch.randn(m, *shape, generator=g)  # noqa: E731
    y = lambda m: torch.randint(0, c, (m,), generator=g)  # noqa: E731
    meta = {"n_classes": c, "shape": list(shape), "augment": augment, "sizes": {"train": n, "val": 40, "test": 40}}
    return Data(x(n), y(n), x(40), y(40), x(40), y(40), meta)


def make(data: Data, **hp) -> CaFo:
    torch.manual_seed(0)
    return CaFo(ARCH, data.meta, settings(**hp), "cpu")


# ---- cached features -------------------------------------------------------------------------------

@pytest.mark.parametrize("block", ["rand", "dfa"])
def test_cached_features_equal_recomputed_and_blocks_not_run_per_batch(block):
    data = make_data = random_data()
    algo = make(make_data, block=block)
    gen = torch.Generator().manual_seed(0)
    calls = []
    for stage in algo.stages():
        algo.begin_stage(stage, data, 1)
        if stage.name != "dfa":
            with torch.no_grad():
                for split, x in (("train", data.x_train), ("val", data.x_val)):
                    torch.testing.assert_close(algo.frozen.feats[split], algo.net.features(x, stage.index),
                                               rtol=0, atol=1e-6)
            hooks = [b.register_forward_hook(lambda *a: calls.append(1)) for b in algo.net.blocks]
            algo.train_epoch(stage, data, gen)
            algo.train_epoch(stage, data, gen)
            algo.validate(stage, data)
            for h in hooks:
                h.remove()
        else:
            algo.train_epoch(stage, data, gen)
        algo.end_stage(stage, data)
    assert calls == []  # predictor epochs never ran a block: they read the cache
    assert not any(p.requires_grad for p in algo.net.blocks.parameters())
    assert not any(m.training for m in algo.net.blocks.modules())


@pytest.mark.locality("cafo")
def test_rand_blocks_stay_at_random_init_and_batchnorm_is_identity():
    data = random_data()
    algo = make(data)
    before = {k: v.clone() for k, v in algo.net.blocks.state_dict().items()}
    fit(algo, data, Stopping(max_epochs=2, patience=2), seed=0)
    for k, v in algo.net.blocks.state_dict().items():
        assert torch.equal(v, before[k]), k
    bn = algo.net.blocks[0][3]
    h = torch.randn(5, 4, 4, 4)
    torch.testing.assert_close(bn(h), h / (1 + bn.eps) ** 0.5)


def test_augmented_data_runs_blocks_per_batch():
    data = random_data(shape=(3, 8, 8), augment=True)
    algo = make(data)
    stage = algo.stages()[1]
    algo.begin_stage(stage, data, 1)
    assert "train" not in algo.frozen.feats and "val" in algo.frozen.feats
    loss = algo.train_epoch(stage, data, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


# ---- sparsemax -------------------------------------------------------------------------------------

def reference_sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Projection onto the simplex by bisection on tau: sum_j max(z_j - tau, 0) = 1."""
    lo, hi = z.min(1, keepdim=True).values - 1, z.max(1, keepdim=True).values
    for _ in range(200):
        mid = (lo + hi) / 2
        big = (z - mid).clamp_min(0).sum(1, keepdim=True) > 1
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    return (z - (lo + hi) / 2).clamp_min(0)


def reference_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Martins and Astudillo (2016), eq. 18: -z_y + 1/2 sum_{j in S(z)} (z_j^2 - tau^2) + 1/2."""
    p = reference_sparsemax(z)
    out = []
    for zi, pi, yi in zip(z, p, y):
        s = pi > 0
        tau = (zi[s] - pi[s])[0]
        out.append(-zi[yi] + 0.5 * (zi[s] ** 2 - tau ** 2).sum() + 0.5)
    return torch.stack(out).mean()


def test_sparsemax_matches_reference_projection():
    z = torch.randn(64, 10, dtype=torch.float64) * 3
    p = sparsemax(z)
    torch.testing.assert_close(p, reference_sparsemax(z))
    torch.testing.assert_close(p.sum(1), torch.ones(64, dtype=torch.float64))
    assert (p == 0).any()  # sparse
    torch.testing.assert_close(sparsemax(torch.tensor([[0.0, 5.0, 0.0]])), torch.tensor([[0.0, 1.0, 0.0]]))


def test_sparsemax_loss_and_gradient_match_reference():
    torch.manual_seed(0)
    z = (torch.randn(32, 10, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, 10, (32,))
    loss = sparsemax_loss(z, y)
    torch.testing.assert_close(loss, reference_loss(z.detach(), y))
    (grad,) = torch.autograd.grad(loss, z)
    expected = (reference_sparsemax(z.detach()) - F.one_hot(y, 10).double()) / 32
    torch.testing.assert_close(grad, expected)
    # and against finite differences of the loss itself
    assert torch.autograd.gradcheck(lambda t: sparsemax_loss(t, y), (z,))
    assert (sparsemax_loss(torch.tensor([[0.0, 5.0, 0.0]]), torch.tensor([1])) == 0)  # margin reached


# ---- closed-form MSE predictor ---------------------------------------------------------------------

def test_least_squares_equals_lstsq():
    torch.manual_seed(0)
    x, y = torch.randn(300, 20), torch.randint(0, 5, (300,))
    w, b = least_squares(x, y, 5, chunk=64)
    a = torch.cat([x.double(), torch.ones(300, 1, dtype=torch.float64)], 1)
    ref = torch.linalg.lstsq(a, F.one_hot(y, 5).double()).solution
    torch.testing.assert_close(w, ref[:20].T.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b, ref[20].float(), rtol=1e-4, atol=1e-5)


def test_ridge_matches_its_normal_equations():
    torch.manual_seed(0)
    x, y = torch.randn(100, 8), torch.randint(0, 3, (100,))
    w, b = least_squares(x, y, 3, ridge=0.5)
    a = torch.cat([x.double(), torch.ones(100, 1, dtype=torch.float64)], 1)
    reg = torch.diag(torch.tensor([0.5] * 8 + [0.0], dtype=torch.float64))
    ref = torch.linalg.solve(a.T @ a / 100 + reg, a.T @ F.one_hot(y, 3).double() / 100)
    torch.testing.assert_close(w, ref[:8].T.float(), rtol=1e-4, atol=1e-5)


def test_mse_predictor_stage_is_the_lstsq_solution():
    data = random_data(n=200)
    algo = make(data, loss="mse")
    assert all(s.epochs == 1 for s in algo.stages())
    fit(algo, data, Stopping(max_epochs=5, patience=2), seed=0)
    with torch.no_grad():
        for k in range(3):
            feats = algo.net.features(data.x_train, k).flatten(1).double()
            a = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.float64)], 1)
            ref = torch.linalg.lstsq(a, F.one_hot(data.y_train, 10).double(), driver="gelsd").solution
            pred = algo.net.heads[k](feats.float()).double()
            torch.testing.assert_close(pred, a @ ref, rtol=1e-3, atol=1e-3)  # same fitted values


# ---- DFA -------------------------------------------------------------------------------------------

def block_grads(algo: CaFo, k: int) -> list[torch.Tensor]:
    return [p.grad.clone() for p in algo.net.blocks[k].parameters()]


def test_dfa_feedback_matrices_are_fixed_unit_rows():
    data = random_data()
    algo = make(data, block="dfa")
    for k, f in enumerate(algo.flat[:-1]):
        b = algo.net.feedback(k)
        assert b.shape == (10, f) and not b.requires_grad
        torch.testing.assert_close(b.norm(dim=1), torch.ones(10))
    assert "feedback0" in algo.net.state_dict()
    b0 = algo.net.feedback(0).clone()
    fit(algo, data, Stopping(max_epochs=1, patience=1), seed=0)
    assert torch.equal(algo.net.feedback(0), b0)


@pytest.mark.locality("cafo")
def test_dfa_gradients_of_blocks_1_2_come_only_from_feedback_matrices():
    data = random_data(n=32)
    algo = make(data, block="dfa")
    algo.net.blocks.train()
    x, y = data.x_train, data.y_train

    def reference(algo: CaFo) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
        """e from a plain forward pass; then block k's grads from its own output alone: e B_k."""
        with torch.no_grad():
            logits = algo.net.aux(algo.net.features(x, 2).flatten(1))
            e = (logits.softmax(1) - F.one_hot(y, 10).float()) / len(y)
        out, h = [], x
        for k in range(2):
            h = algo.net.blocks[k](h.detach())
            grad_h = (e @ algo.net.feedback(k)).view_as(h)
            out.append(list(torch.autograd.grad(h, algo.net.blocks[k].parameters(), grad_h)))
        return out, e

    state = {k: v.clone() for k, v in algo.net.state_dict().items()}
    algo.net.zero_grad(set_to_none=True)
    algo.dfa_backward(x, y)
    algo.net.load_state_dict(state)  # undo the BatchNorm running-stat updates of that pass
    ref, e = reference(algo)
    for k in range(2):
        for got, want in zip(block_grads(algo, k), ref[k]):
            torch.testing.assert_close(got, want)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.net.blocks[2].parameters())
    assert all(p.grad is not None for p in algo.net.aux.parameters())

    # the loss alone (no feedback signal) sends nothing into blocks 1 and 2
    algo.net.zero_grad(set_to_none=True)
    h = x
    outs = []
    for block in algo.net.blocks:
        h = block(h.detach())
        outs.append(h)
    F.cross_entropy(algo.net.aux(h.flatten(1)), y).backward()
    assert all(p.grad is None for k in range(2) for p in algo.net.blocks[k].parameters())

    # changing later blocks changes e only: block 1's gradient is still J_1^T (e' B_1) with the new e'
    algo.net.load_state_dict(state)
    g_before = block_grads_after(algo, x, y, 0)
    with torch.no_grad():
        algo.net.blocks[1][0].weight.mul_(-2.0)
        algo.net.blocks[2][0].weight.add_(0.5)
    state2 = {k: v.clone() for k, v in algo.net.state_dict().items()}
    g_after = block_grads_after(algo, x, y, 0)
    algo.net.load_state_dict(state2)
    ref2, e2 = reference(algo)
    for got, want in zip(g_after, ref2[0]):
        torch.testing.assert_close(got, want)
    # ... and with the error held fixed (same e), block 1's gradient does not depend on them at all
    with torch.no_grad():
        h1 = algo.net.blocks[0](x)
    grad_fixed_e = torch.autograd.grad(algo.net.blocks[0](x), algo.net.blocks[0].parameters(),
                                       (e @ algo.net.feedback(0)).view_as(h1))
    for got, want in zip(grad_fixed_e, ref[0]):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(e, e2)  # later blocks did change the error
    assert any(not torch.allclose(a, b) for a, b in zip(g_before, g_after))


def block_grads_after(algo: CaFo, x, y, k: int) -> list[torch.Tensor]:
    algo.net.zero_grad(set_to_none=True)
    algo.dfa_backward(x, y)
    return block_grads(algo, k)


def test_dfa_stage_trains_blocks_then_freezes_them():
    data = random_data()
    algo = make(data, block="dfa", dfa_epochs=2)
    stages = algo.stages()
    assert stages[0] == Stage("dfa", monitor="acc", epochs=2) and len(stages) == 4
    before = algo.net.blocks[0][0].weight.clone()
    fit(algo, data, Stopping(max_epochs=2, patience=2), seed=0)
    assert not torch.equal(before, algo.net.blocks[0][0].weight)
    assert not any(p.requires_grad for p in algo.net.blocks.parameters())


# ---- options, errors -------------------------------------------------------------------------------

def test_softmax_sum_option_and_errors():
    data = random_data()
    algo = make(data, combine="softmax-sum")
    out = algo.predict(data.x_test)
    torch.testing.assert_close(out.sum(1), torch.full((40,), 3.0))
    with pytest.raises(ValueError, match="loss = 'hinge'"):
        make(data, loss="hinge")
    with pytest.raises(ValueError, match="cnn"):
        CaFo({"type": "mlp", "widths": [8]}, data.meta, HP, "cpu")


# ---- learns ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.pt"
    prepare("digits", None, path)
    return path


@pytest.mark.parametrize("name, hp", [
    ("cafo-rand-ce", {"block": "rand", "loss": "ce"}),
    ("cafo-dfa-ce", {"block": "dfa", "loss": "ce", "dfa_epochs": 8}),
    ("cafo-rand-mse", {"block": "rand", "loss": "mse", "ridge": 1e-3}),
    ("cafo-rand-sl", {"block": "rand", "loss": "sl"}),
])
def test_cafo_learns_digits(digits, name, hp):
    data = load(digits)
    torch.manual_seed(0)
    algo = CaFo({"type": "cnn", "channels": [16, 32, 64]}, data.meta,
                settings(**{"batch_size": 128, **hp}), "cpu")
    fit(algo, data, Stopping(max_epochs=30, patience=5), seed=0)
    acc = accuracy(algo.predict(data.x_test), data.y_test)
    assert acc > 85.0, f"{name}: {acc:.1f}%"
    assert set(algo.layer_accuracies(data.x_test, data.y_test)) == {"block1", "block2", "block3"}
