"""PEPITA: one step against the paper's formulas (without dropout and with a fixed mask), the mask
shared by both passes, the paper's initialisation, no backward pass, the schedule across a resume,
and that it learns digits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bpfree.algorithms.base import accuracy, generator
from bpfree.algorithms.pepita import Pepita
from bpfree.data import Data
from bpfree.engine import Stopping, fit
from forward_only import no_backward
from resume import assert_resume_is_exact

CPU = torch.device("cpu")


def tiny_data(n=16, d=6, c=3) -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 1, d, generator=g)
    y = torch.arange(n) % c
    meta = {"n_classes": c, "shape": [1, 1, d], "augment": False, "mean": [0.3], "std": [0.2]}
    return Data(x, y, x[:8], y[:8], x[:8], y[:8], meta)


def make(widths=(5, 4), data=None, **hp) -> tuple[Pepita, Data]:
    data = data or tiny_data()
    torch.manual_seed(0)
    hp = {"lr": 0.1, "batch_size": 16, **hp}
    return Pepita({"type": "mlp", "widths": list(widths)}, data.meta, hp, CPU), data


def paper_updates(Ws, F_, x, y, masks):
    """dW_l of Dellaferrera and Kreiman (2022), Algorithm 1, written out for a 2-hidden-layer net
    with rows as examples: pass 1 on x, pass 2 on x + e F^T, dropout masks m_l on both."""
    onehot = F.one_hot(y, 3).float()
    W1, W2, W3 = Ws
    m1, m2 = masks
    h1 = (x @ W1.T).clamp(min=0) * m1
    h2 = (h1 @ W2.T).clamp(min=0) * m2
    e = (h2 @ W3.T).softmax(1) - onehot
    x_mod = x + e @ F_.T
    h1m = (x_mod @ W1.T).clamp(min=0) * m1
    h2m = (h1m @ W2.T).clamp(min=0) * m2
    e_mod = (h2m @ W3.T).softmax(1) - onehot
    B = len(y)
    return [(h1 - h1m).T @ x_mod / B, (h2 - h2m).T @ h1m / B, e_mod.T @ h2m / B]


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.locality("pepita")
def test_one_step_matches_the_paper(with_mask):
    algo, data = make(dropout_keep=1.0 if not with_mask else 0.9)
    Ws = [W.detach().clone() for W in algo.net.weights]
    x = data.x_train.flatten(1) * 0.2 + 0.3  # input "unit": the loader's normalisation undone
    y = data.y_train
    if with_mask:
        g = torch.Generator().manual_seed(1)
        masks = [(torch.rand(16, d, generator=g) < 0.9).float() / 0.9 for d in (5, 4)]
    else:
        masks = [torch.ones(16, 5), torch.ones(16, 4)]
    expect = paper_updates(Ws, algo.net.F, x, y, masks)
    algo.step(algo._input(data.x_train), y, masks if with_mask else None)
    for W, dW in zip(algo.net.weights, expect):
        torch.testing.assert_close(W.grad, dW, rtol=1e-5, atol=1e-7)
        assert dW.abs().sum() > 0
    # the update is not backprop's gradient of the cross-entropy
    net_W = [W.detach().clone().requires_grad_() for W in Ws]
    h = x
    for W in net_W[:-1]:
        h = (h @ W.T).clamp(min=0)
    bp = torch.autograd.grad(F.cross_entropy(h @ net_W[-1].T, y), net_W)
    assert not torch.allclose(bp[0], expect[0], atol=1e-4)


def test_first_epoch_steps_sgd_with_the_update():
    """One full batch, dropout off: W <- W - lr * dW (the first momentum step is the update itself)."""
    algo, data = make(dropout_keep=1.0)
    Ws = [W.detach().clone() for W in algo.net.weights]
    x = data.x_train.flatten(1) * 0.2 + 0.3
    ones = [torch.ones(16, 5), torch.ones(16, 4)]
    expect = paper_updates(Ws, algo.net.F, x, data.y_train, ones)
    stage = algo.stages()[0]
    algo.begin_stage(stage, data, 10)
    with no_backward():
        loss = algo.train_epoch(stage, data, generator(CPU, 0))
    assert not loss.requires_grad
    h = x
    for W in Ws[:-1]:
        h = (h @ W.T).clamp(min=0)
    torch.testing.assert_close(loss, F.cross_entropy(h @ Ws[-1].T, data.y_train))  # pass 1's loss
    for W, W0, dW in zip(algo.net.weights, Ws, expect):
        torch.testing.assert_close(W.detach(), W0 - 0.1 * dW, rtol=1e-5, atol=1e-7)


@pytest.mark.locality("pepita")
def test_no_backward_pass_and_each_update_is_local_to_its_layer():
    """modulated-forward: no reverse-mode call and no autograd graph in a training epoch; a hidden
    layer's update depends only on its own two activities and the modulated activity below it, so
    rescaling the output layer (which changes e, hence both passes) is the only route by which the
    layers above reach it: with F = 0 the second pass equals the first and hidden layers get 0."""
    algo, data = make(dropout_keep=1.0)
    stage = algo.stages()[0]
    algo.begin_stage(stage, data, 10)
    with no_backward():
        algo.train_epoch(stage, data, generator(CPU, 0))
    assert all(not p.requires_grad and p.grad.grad_fn is None for p in algo.net.parameters())
    algo.net.F.zero_()
    algo.step(algo._input(data.x_train), data.y_train, None)
    assert all(torch.equal(W.grad, torch.zeros_like(W)) for W in algo.net.weights[:-1])
    assert algo.net.weights[-1].grad.abs().sum() > 0  # the output layer still learns from e


def test_both_passes_share_one_dropout_mask():
    algo, data = make(dropout_keep=0.5)
    seen = []
    forward = algo.net.forward

    def spy(x, masks=None):
        seen.append(masks)
        return forward(x, masks)

    algo.net.forward = spy
    stage = algo.stages()[0]
    algo.begin_stage(stage, data, 10)
    algo.train_epoch(stage, data, generator(CPU, 0))
    assert len(seen) == 2 and seen[0] is seen[1] and seen[0] is not None
    m = seen[0][0]
    assert set(m.unique().tolist()) <= {0.0, 2.0} and 0 < (m == 0).float().mean() < 1
    algo.predict(data.x_val)
    assert seen[-1] is None  # testing is one clean pass


def test_paper_initialisation_and_no_biases():
    meta = {"n_classes": 10, "shape": [1, 28, 28], "mean": [0.1307], "std": [0.3081]}
    torch.manual_seed(0)
    algo = Pepita({"type": "mlp", "widths": [1024]}, meta, {"lr": 0.1, "batch_size": 64}, CPU)
    W1, W2 = algo.net.weights
    assert W1.shape == (1024, 784) and W2.shape == (10, 1024) and len(list(algo.net.parameters())) == 2
    for W in (W1, W2):
        bound = math.sqrt(6 / W.shape[1])
        assert 0.99 * bound < W.abs().max() <= bound
    Fm = algo.net.F
    bound = math.sqrt(6 / 784) * 0.05
    assert Fm.shape == (784, 10) and 0.99 * bound < Fm.abs().max() <= bound and abs(Fm.mean()) < 0.05 * bound
    assert "F" in algo.net.state_dict()  # the fixed projection travels with the checkpoints
    c = algo.cost(algo.stages()[0])
    fwd = 784 * 1024 + 1024 * 10
    assert c.train == 3 * fwd + 7840 and c.eval == fwd == algo.predict_macs()


def test_unit_input_undoes_the_loaders_normalisation():
    algo, data = make()
    torch.testing.assert_close(algo._input(data.x_train), data.x_train.flatten(1) * 0.2 + 0.3)
    raw, _ = make(input="normalised")
    assert torch.equal(raw._input(data.x_train), data.x_train.flatten(1))


def test_schedule_milestones_are_fractions_of_the_budget():
    algo, data = make()
    stage = algo.stages()[0]
    algo.begin_stage(stage, data, 10)
    lrs = []
    for _ in range(10):
        lrs.append(algo.opt.param_groups[0]["lr"])
        algo.train_epoch(stage, data, generator(CPU, 0))
    assert lrs == pytest.approx([0.1] * 6 + [0.01] * 3 + [0.001])
    with pytest.raises(ValueError, match="lr_milestones"):
        make(lr_milestones="0.9,0.6")
    with pytest.raises(ValueError, match="lr_milestones"):
        make(lr_milestones="sixty")
    assert make(lr_milestones="")[0].Settings is not None


def test_resumed_run_keeps_the_schedule_and_momentum(digits, tmp_path):
    def make_digits():
        torch.manual_seed(0)
        return Pepita({"type": "mlp", "widths": [32]}, digits.meta, {"lr": 0.05, "batch_size": 64}, CPU)

    # killed after the first milestone (epoch 3 of 5)
    assert_resume_is_exact(make_digits, digits, Stopping(max_epochs=5, patience=5), tmp_path / "ckpt.pt", 4)


def test_learns_real_digits(digits):
    torch.manual_seed(0)
    algo = Pepita({"type": "mlp", "widths": [256]}, digits.meta, {"lr": 0.1, "batch_size": 64}, CPU)
    fit(algo, digits, Stopping(max_epochs=30, patience=30), seed=0)
    acc = accuracy(algo.predict(digits.x_test), digits.y_test)
    assert acc > 90.0, acc
