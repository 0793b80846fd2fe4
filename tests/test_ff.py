"""Forward-Forward: fast prediction, locality of the losses, straight-through ReLU, peer
normalisation, and that it learns on digits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bpfree import data as D
from bpfree.datasets import prepare
from bpfree.algorithms.base import accuracy
from bpfree.algorithms.ff import ForwardForward, StraightThroughReLU, cooldown, rms_norm
from bpfree.engine import Stopping, fit
from resume import assert_resume_is_exact

META = {"n_classes": 10, "shape": [1, 8, 8]}
HP = {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 16}


def make(widths=(32, 24, 16), **hp) -> ForwardForward:
    torch.manual_seed(0)
    return ForwardForward({"type": "mlp", "widths": list(widths)}, META, {**HP, **hp}, "cpu")


def test_fast_goodness_equals_full_labelled_passes():
    algo = make()
    x = torch.randn(50, 1, 8, 8)
    fast, naive = algo.goodness(x), algo.goodness_naive(x)
    assert fast.shape == naive.shape == (50, 10, 3)
    torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-4)
    assert torch.equal(algo.predict(x).argmax(1), naive[:, :, 1:].sum(2).argmax(1))


@pytest.mark.locality("ff")
def test_each_layer_loss_sends_no_gradient_to_earlier_layers():
    algo = make()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    z = algo._embed(x, y)
    outs = []
    for layer in algo.net.layers:  # the training forward: detached, normalised inputs
        z = StraightThroughReLU.apply(layer(z))
        outs.append(z)
        z = rms_norm(z.detach())
    target = torch.ones(8)
    params = list(algo.net.layers.parameters())
    for i, z in enumerate(outs):
        grads = torch.autograd.grad(algo._ff_loss(z, target), params, allow_unused=True)
        for j, layer in enumerate(algo.net.layers):
            gw, gb = grads[2 * j], grads[2 * j + 1]
            if j == i:
                assert gw is not None and gw.abs().sum() > 0
            else:
                assert gw is None and gb is None, f"layer {i + 1}'s loss reached layer {j + 1}"


def test_straight_through_relu():
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5], requires_grad=True)
    out = StraightThroughReLU.apply(x)
    assert torch.equal(out, torch.relu(x.detach()))
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out.backward(g)
    assert torch.equal(x.grad, g)  # negative inputs pass the gradient too


def test_peer_normalisation_term_matches_hand_computation():
    algo = make()
    z = torch.rand(6, 32, requires_grad=True)
    before = algo.net.running(0).clone()  # 0.5 everywhere at init
    loss = algo._peer_loss(0, z)
    run = 0.9 * before + 0.1 * z.detach().mean(0)
    expected = ((run.mean() - run) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(algo.net.running(0), run)  # the running mean was updated
    loss.backward()  # the gradient flows through the batch's mean activity
    d = 0.1 * (2 * (run - run.mean()) / 32) / 6
    torch.testing.assert_close(z.grad, d.expand(6, -1))


def test_bce_logit_is_goodness_minus_width():
    algo = make()
    z = torch.rand(4, 32)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = F.binary_cross_entropy_with_logits(z.pow(2).sum(1) - 32, t)
    torch.testing.assert_close(algo._ff_loss(z, t), expected)


def test_cooldown_schedule():
    factors = [cooldown(e, 10) for e in range(10)]
    assert factors[:6] == [1.0] * 6 and factors[-1] == pytest.approx(0.4)
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_training_follows_the_cooldown_schedule(digits):
    """The rate of each epoch is lr x cooldown(e, E) for both parameter groups."""
    algo = make(widths=(16, 16), downstream_lr=1e-2)
    stage = algo.stages()[0]
    algo.begin_stage(stage, digits, 4)
    gen = torch.Generator().manual_seed(0)
    for e in range(4):
        assert [g["lr"] for g in algo.opt.param_groups] == [HP["lr"] * cooldown(e, 4), 1e-2 * cooldown(e, 4)]
        algo.train_epoch(stage, digits, gen)


def test_resumed_run_keeps_the_learning_rate_schedule(digits, tmp_path):
    """Regression: the schedule was a plain epoch counter, not saved in checkpoints, so a run killed
    in the second half of its budget resumed at the full learning rate."""
    # killed in epoch 5 of 6 (a kill before epoch 5 is saved: the run resumes from epoch 4);
    # epoch 6 runs at 2/3 of the rate
    assert_resume_is_exact(lambda: make(widths=(16, 16)), digits, Stopping(max_epochs=6, patience=6),
                           tmp_path / "ckpt.pt", kill_after=5)


def test_downstream_needs_its_lr():
    with pytest.raises(ValueError, match="downstream_lr"):
        make(predict="downstream")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("ff") / "d.pt"
    prepare("digits", None, path)
    return D.load(path)


def test_ff_learns_digits(digits):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    algo = ForwardForward({"type": "mlp", "widths": [256, 256]}, digits.meta,
                          {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 32}, "cpu")
    res = fit(algo, digits, Stopping(max_epochs=30, patience=30), seed=0)
    acc = accuracy(algo.predict(digits.x_test), digits.y_test)
    assert acc > 85.0, f"test accuracy {acc:.1f}% (history {res.history[-3:]})"


def test_ff_downstream_mode_learns_digits(digits):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    algo = ForwardForward({"type": "mlp", "widths": [128, 128]}, digits.meta,
                          {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 32, "predict": "downstream",
                           "downstream_lr": 1e-2, "downstream_weight_decay": 1e-3}, "cpu")
    fit(algo, digits, Stopping(max_epochs=10, patience=10), seed=0)
    assert accuracy(algo.predict(digits.x_test), digits.y_test) > 80.0


# ---- SymBa (loss: symba) ---------------------------------------------------------------------------

def test_symba_loss_and_gradient_match_hand_formula():
    """L = mean_i log(1 + exp(-alpha (g+_i - g-_i))), g = mean_j z_j^2; by hand,
    dL/dz+_i = -alpha s_i 2 z+_i / (d B) and dL/dz-_i = +alpha s_i 2 z-_i / (d B), s_i = sigmoid(-alpha gap_i):
    equal and opposite pushes on the pair."""
    algo = make(loss="symba", alpha=4.0)
    g = torch.Generator().manual_seed(0)
    zp = torch.rand(5, 32, generator=g, dtype=torch.float64, requires_grad=True)
    zn = torch.rand(5, 32, generator=g, dtype=torch.float64, requires_grad=True)
    loss = algo._symba_loss(zp, zn)
    gp, gn = zp.detach().pow(2).mean(1), zn.detach().pow(2).mean(1)
    gap = gp - gn
    expected = torch.log(1 + torch.exp(-4.0 * gap)).mean()
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    s = 1 / (1 + torch.exp(4.0 * gap))
    torch.testing.assert_close(zp.grad, -4.0 * s[:, None] * 2 * zp.detach() / (32 * 5))
    torch.testing.assert_close(zn.grad, 4.0 * s[:, None] * 2 * zn.detach() / (32 * 5))


def test_symba_training_step_uses_the_pair_term_per_layer(digits):
    """One batch of the algorithm's own training step: the layers' .grad equal the gradient of the
    SymBa terms (negatives drawn as the algorithm draws them), layer by layer on detached inputs."""
    algo = make(widths=(16, 12), loss="symba", alpha=4.0, peer_weight=0.0, batch_size=len(digits.y_train))
    state = {k: v.clone() for k, v in algo.net.state_dict().items()}
    gen = torch.Generator().manual_seed(3)  # the draws of train_epoch: the batch order, then the wrong labels
    idx = torch.randperm(len(digits.y_train), generator=gen)
    x, y = digits.x_train[idx], digits.y_train[idx]
    wrong = (y + torch.randint(1, 10, (len(y),), generator=gen)) % 10
    ref = make(widths=(16, 12), loss="symba", alpha=4.0, peer_weight=0.0)
    ref.net.load_state_dict(state)
    z = ref._embed(torch.cat([x, x]), torch.cat([y, wrong]))
    grads = []
    for layer in ref.net.layers:
        z = StraightThroughReLU.apply(layer(z))
        B = len(y)
        gap = z[:B].pow(2).mean(1) - z[B:].pow(2).mean(1)
        grads.append(torch.autograd.grad(F.softplus(-4.0 * gap).mean(), [layer.weight, layer.bias]))
        z = rms_norm(z.detach())
    algo.begin_stage(algo.stages()[0], digits, 1)
    algo.train_epoch(algo.stages()[0], digits, torch.Generator().manual_seed(3))  # one batch: its .grad stays
    for layer, (gw, gb) in zip(algo.net.layers, grads):
        torch.testing.assert_close(layer.weight.grad, gw)
        torch.testing.assert_close(layer.bias.grad, gb)


def test_symba_settings_rules():
    with pytest.raises(ValueError, match="alpha"):
        make(loss="symba")
    with pytest.raises(ValueError, match="loss ff has no alpha"):
        make(alpha=4.0)


def test_symba_validation_loss_is_the_expected_pair_term():
    algo = make(widths=(16, 12), loss="symba", alpha=4.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 8, 8, generator=g), torch.arange(6) % 10
    data = D.Data(x, y, x, y, x, y, {**META, "augment": False})
    G = algo.goodness(x) / torch.tensor([16.0, 12.0])  # (N, C, L): mean squared activation
    total = 0.0
    for i in range(6):
        for layer in range(2):
            total += sum(F.softplus(-4.0 * (G[i, y[i], layer] - G[i, c, layer])).item()
                         for c in range(10) if c != y[i]) / 9
    assert algo.validate(algo.stages()[0], data)["loss"] == pytest.approx(total / 6, rel=1e-5)


def test_symba_learns_digits(digits):
    torch.manual_seed(0)
    algo = ForwardForward({"type": "mlp", "widths": [256, 256]}, digits.meta,
                          {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 32, "loss": "symba", "alpha": 4.0}, "cpu")
    res = fit(algo, digits, Stopping(max_epochs=30, patience=30), seed=0)
    acc = accuracy(algo.predict(digits.x_test), digits.y_test)
    assert acc > 90.0, f"test accuracy {acc:.1f}% (history {res.history[-3:]})"
