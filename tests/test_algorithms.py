"""The math of bp and mf against hand-written references, and that each learns on real digits."""
from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from bpfree import algorithms, hparams
from bpfree.algorithms.base import Algorithm, Cost, Stage, accuracy, generator
from bpfree.data import Data
from bpfree.engine import Diverged, FitResult, Stopping, fit
from bpfree.train import learned_nothing

CPU = torch.device("cpu")


def tiny_data(n=16, d=6, c=3, seed=0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, d, generator=g)
    y = torch.arange(n) % c
    meta = {"dataset": "tiny", "n_classes": c, "shape": [1, 1, d], "augment": False}
    return Data(x, y, x[:8], y[:8], x[:8], y[:8], meta)


def adamw_step(p, g, lr, wd, t=1, b1=0.9, b2=0.999, eps=1e-8):
    """One AdamW step from zero moments, by the formula (Loshchilov & Hutter)."""
    m, v = (1 - b1) * g, (1 - b2) * g * g
    mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    return p * (1 - lr * wd) - lr * mhat / (vhat.sqrt() + eps)


def test_bp_one_step_matches_hand_computed_backprop():
    data = tiny_data()
    hp = {"lr": 1e-2, "weight_decay": 0.1, "batch_size": 16}  # one full batch = one step
    torch.manual_seed(0)
    algo = algorithms.get("bp")({"type": "mlp", "widths": [5, 4]}, data.meta, hp, CPU)
    (W1, b1), (W2, b2) = [(l.weight.detach().clone(), l.bias.detach().clone()) for l in algo.net.hidden]
    W3, b3 = algo.net.head.weight.detach().clone(), algo.net.head.bias.detach().clone()
    x, y = data.x_train.flatten(1), data.y_train
    # forward
    z1 = x @ W1.T + b1
    a1 = z1.clamp(min=0)
    z2 = a1 @ W2.T + b2
    a2 = z2.clamp(min=0)
    logits = a2 @ W3.T + b3
    # backward by hand: d(mean CE)/dlogits = (softmax - onehot) / B
    d3 = (logits.softmax(1) - F.one_hot(y, 3).float()) / len(y)
    gW3, gb3 = d3.T @ a2, d3.sum(0)
    d2 = (d3 @ W3) * (z2 > 0)
    gW2, gb2 = d2.T @ a1, d2.sum(0)
    d1 = (d2 @ W2) * (z1 > 0)
    gW1, gb1 = d1.T @ x, d1.sum(0)
    algo.train_epoch(algo.stages()[0], data, generator(CPU, 0))
    got = [algo.net.hidden[0].weight, algo.net.hidden[0].bias, algo.net.hidden[1].weight,
           algo.net.hidden[1].bias, algo.net.head.weight, algo.net.head.bias]
    # the gradients themselves (the one step's .grad, kept after it): an Adam step from zero
    # moments is about lr x sign(g) and would not see a gradient of the wrong scale
    for g, want in zip(got, [gW1, gb1, gW2, gb2, gW3, gb3]):
        torch.testing.assert_close(g.grad, want, rtol=1e-5, atol=1e-7)
    expect = [adamw_step(p, g, hp["lr"], hp["weight_decay"]) for p, g in
              [(W1, gW1), (b1, gb1), (W2, gW2), (b2, gb2), (W3, gW3), (b3, gb3)]]
    for e, g in zip(expect, got):
        torch.testing.assert_close(g.detach(), e, rtol=1e-5, atol=1e-6)


def test_bp_init_is_kaiming_uniform_with_zero_bias():
    torch.manual_seed(0)
    algo = algorithms.get("bp")({"type": "mlp", "widths": [2000]}, {"n_classes": 10, "shape": [1, 28, 28]},
                                {"lr": 1e-3, "weight_decay": 0, "batch_size": 8}, CPU)
    w = algo.net.hidden[0].weight
    bound = math.sqrt(6 / 784)  # gain sqrt(2) x sqrt(3 / fan_in)
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert torch.all(algo.net.hidden[0].bias == 0)


def mf(hp=None, widths=(5, 4), data=None):
    data = data or tiny_data()
    torch.manual_seed(0)
    return algorithms.get("mf")({"type": "mlp", "widths": list(widths)}, data.meta,
                                {"lr": 1e-2, "batch_size": 16, **(hp or {})}, CPU), data


def test_mf_projection_init_and_shapes():
    algo, _ = mf(widths=(400, 100))
    for M, d in zip(algo.net.proj, (400, 100)):
        assert M.shape == (3, d) and M.abs().max() <= d ** -0.5


def test_mf_local_loss_and_gradients_match_hand_computation():
    """Layer 2's step: loss = CE(relu(a1 W2^T + b2) M2^T, y) with a1 from the frozen layer 1;
    the step's gradients equal the hand-computed ones and give the Adam update; layer 1 gets no
    gradient and does not move."""
    algo, data = mf()
    stages = algo.stages()
    assert [s.name for s in stages] == ["layer1", "layer2"] and all(s.monitor == "loss" for s in stages)
    algo.begin_stage(stages[0], data, 1)
    algo.end_stage(stages[0], data)  # layer 1 frozen at its initial weights
    W1 = algo.net.hidden[0].weight.detach().clone()
    W2, b2, M2 = (t.detach().clone() for t in (algo.net.hidden[1].weight, algo.net.hidden[1].bias, algo.net.proj[1]))
    x, y = data.x_train.flatten(1), data.y_train
    a1 = (x @ W1.T + algo.net.hidden[0].bias.detach()).clamp(min=0)
    algo.begin_stage(stages[1], data, 1)
    torch.testing.assert_close(algo.frozen.feats["train"], a1)  # cached, not recomputed per batch
    z2 = a1 @ W2.T + b2
    a2 = z2.clamp(min=0)
    G = a2 @ M2.T
    dG = (G.softmax(1) - F.one_hot(y, 3).float()) / len(y)
    gM2 = dG.T @ a2
    dz2 = (dG @ M2) * (z2 > 0)
    gW2, gb2 = dz2.T @ a1, dz2.sum(0)
    loss = algo.train_epoch(stages[1], data, generator(CPU, 0))
    torch.testing.assert_close(loss, F.cross_entropy(G, y))
    for p, want in ((algo.net.hidden[1].weight, gW2), (algo.net.hidden[1].bias, gb2), (algo.net.proj[1], gM2)):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)  # the gradients, not only the step
    assert algo.net.hidden[0].weight.grad is None and algo.net.proj[0].grad is None
    adam = lambda p, g: adamw_step(p, g, 1e-2, 0.0)  # noqa: E731  Adam with wd 0 == AdamW with wd 0
    torch.testing.assert_close(algo.net.hidden[1].weight.detach(), adam(W2, gW2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(algo.net.hidden[1].bias.detach(), adam(b2, gb2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(algo.net.proj[1].detach(), adam(M2, gM2), rtol=1e-5, atol=1e-6)
    assert torch.equal(algo.net.hidden[0].weight, W1)  # frozen layer untouched


@pytest.mark.parametrize("mode", ["greedy", "simultaneous"])
@pytest.mark.locality("mf")
def test_mf_no_gradient_crosses_a_layer_boundary(mode):
    """Autograd check: the loss of layer 2 gives layer 1 no gradient, in both modes."""
    algo, data = mf({"mode": mode})
    net = algo.net
    a1 = net.layer(0, data.x_train.flatten(1))
    a2 = net.layer(1, a1.detach())  # what both training modes feed layer 2
    F.cross_entropy(net.scores(1, a2), data.y_train).backward()
    assert net.hidden[0].weight.grad is None and net.proj[0].grad is None
    assert net.hidden[1].weight.grad is not None
    # and the algorithm's own step leaves layer 1 untouched when only layer 2 trains
    if mode == "greedy":
        net.zero_grad(set_to_none=True)
        before = net.hidden[0].weight.detach().clone()
        for s in algo.stages()[:1]:
            algo.begin_stage(s, data, 1)
            algo.end_stage(s, data)
        algo.begin_stage(algo.stages()[1], data, 1)
        algo.train_epoch(algo.stages()[1], data, generator(CPU, 0))
        assert torch.equal(net.hidden[0].weight, before)


def test_mf_simultaneous_step_equals_sum_of_local_steps():
    """In simultaneous mode the summed loss gives each layer exactly its own local gradient."""
    algo, data = mf({"mode": "simultaneous"})
    net, x, y = algo.net, data.x_train.flatten(1), data.y_train
    a1 = net.layer(0, x)
    F.cross_entropy(net.scores(0, a1), y).backward()
    g1 = net.hidden[0].weight.grad.clone()
    net.zero_grad()
    a2 = net.layer(1, a1.detach())
    F.cross_entropy(net.scores(1, a2), y).backward()
    g2 = net.hidden[1].weight.grad.clone()
    net.zero_grad()
    a, loss = x, 0.0
    for i in range(2):
        a = net.layer(i, a.detach())
        loss = loss + F.cross_entropy(net.scores(i, a), y)
    loss.backward()
    torch.testing.assert_close(net.hidden[0].weight.grad, g1)
    torch.testing.assert_close(net.hidden[1].weight.grad, g2)


def test_mf_predicts_from_last_layer_or_sum():
    algo, data = mf()
    x = data.x_val
    G = [algo.net.scores(i, a) for i, a in enumerate(algo.net.activations(x))]
    torch.testing.assert_close(algo.predict(x), G[-1])
    algo_sum, _ = mf({"predict": "sum"})
    G = [algo_sum.net.scores(i, a) for i, a in enumerate(algo_sum.net.activations(x))]
    torch.testing.assert_close(algo_sum.predict(x), G[0] + G[1])


def test_cost_counts_no_input_gradient_for_first_layer():
    meta = {"n_classes": 10, "shape": [1, 28, 28]}
    bp = algorithms.get("bp")({"type": "mlp", "widths": [1000, 1000]}, meta,
                              {"lr": 1e-3, "weight_decay": 0, "batch_size": 1}, CPU)
    fwd = 784 * 1000 + 1000 * 1000 + 1000 * 10
    assert bp.cost(bp.stages()[0]) == Cost(train=3 * fwd - 784 * 1000, eval=fwd)
    m = algorithms.get("mf")({"type": "mlp", "widths": [1000, 1000]}, meta, {"lr": 1e-3, "batch_size": 1}, CPU)
    s1, s2 = m.stages()
    assert m.cost(s1) == Cost(train=2 * 784_000 + 3 * 10_000, eval=784_000 + 10_000, once=784_000)
    assert m.cost(s2) == Cost(train=2 * 1_000_000 + 3 * 10_000, eval=1_010_000, once=0)


@pytest.mark.parametrize("name,hp", [("bp", {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 64}),
                                     ("mf", {"lr": 3e-3, "batch_size": 64}),
                                     ("mf", {"lr": 3e-3, "batch_size": 64, "mode": "simultaneous", "predict": "sum"})])
def test_learns_real_digits(digits, name, hp):
    torch.manual_seed(0)
    algo = algorithms.get(name)({"type": "mlp", "widths": [128, 128]}, digits.meta, hp, CPU)
    res = fit(algo, digits, Stopping(max_epochs=25, patience=5), seed=0)
    test_acc = accuracy(algo.predict(digits.x_test), digits.y_test)
    assert test_acc > 90.0, (name, hp, test_acc)
    assert res.val_acc > 90.0 and res.macs > 0


class Scripted(Algorithm):
    """A fake algorithm whose validation accuracy follows a script; its 'weights' record the epoch."""

    Settings = hparams.Settings  # declares no setting
    LOCALITY = "end-to-end"

    def __init__(self, script, losses=None):
        super().__init__({"type": "mlp"}, {"n_classes": 2, "shape": [1]}, {}, CPU)
        self.script, self.losses, self.t = script, losses or [0.5] * len(script), 0
        self.net = torch.nn.Linear(1, 1)
        self.restored = None

    def stages(self):
        return [Stage("all", monitor="acc")]

    def train_epoch(self, stage, data, gen):
        self.t += 1
        with torch.no_grad():
            self.net.weight.fill_(self.t)
        return torch.tensor(self.losses[self.t - 1])

    def validate(self, stage, data):
        return {"acc": self.script[self.t - 1], "loss": 0.0}

    def predict(self, x):
        return torch.zeros(len(x), 2)

    def cost(self, stage):
        return Cost(1, 1)


def test_early_stopping_restores_best_checkpoint():
    algo = Scripted([50, 60, 70, 65, 69, 68, 90])
    data = tiny_data(c=2)
    res = fit(algo, data, Stopping(max_epochs=10, patience=3), seed=0)
    assert res.epochs == 6 and res.best_epoch == 3  # 3 epochs without improvement after epoch 3
    assert algo.net.weight.item() == 3  # weights of epoch 3 restored
    assert [r["val_acc"] for r in res.history] == [50, 60, 70, 65, 69, 68]


def test_min_delta_and_epoch_cap():
    algo = Scripted([50, 50.05, 50.1, 50.15])
    res = fit(algo, tiny_data(c=2), Stopping(max_epochs=4, patience=2, min_delta=0.2), seed=0)
    assert res.epochs == 3  # no improvement above min_delta for 2 epochs ...
    assert res.best_epoch == 3 and algo.net.weight.item() == 3  # ... but the best epoch is restored
    assert res.capped_stages == 0  # patience ended it
    res = fit(Scripted([1, 2, 3, 4, 5]), tiny_data(c=2), Stopping(max_epochs=4, patience=2), seed=0)
    assert res.epochs == 4 and res.best_epoch == 4
    assert res.capped_stages == 1  # the cap ended it while it still improved
    res = fit(Scripted([1, 2, 2, 2]), tiny_data(c=2), Stopping(max_epochs=4, patience=2), seed=0)
    assert res.epochs == 4 and res.capped_stages == 0  # its last epoch used up the patience too


def test_stage_can_stop_on_loss_and_restore_best_accuracy():
    """mf's rule: stop on the validation loss (paper), restore the best validation accuracy."""
    class LossStopped(Scripted):
        def stages(self):
            return [Stage("layer1", monitor="loss", restore="acc")]

        def validate(self, stage, data):
            return {"acc": self.script[self.t - 1], "loss": [0.5, 0.4, 0.45, 0.46, 0.47][self.t - 1]}

    algo = LossStopped([90, 91, 93, 92, 80])
    res = fit(algo, tiny_data(c=2), Stopping(max_epochs=10, patience=3), seed=0)
    assert res.epochs == 5 and res.best_epoch == 3 and algo.net.weight.item() == 3


def test_divergence_is_reported_not_hidden():
    with pytest.raises(Diverged, match="nan"):
        fit(Scripted([50, 60], losses=[0.5, float("nan")]), tiny_data(c=2), Stopping(5, 2), seed=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 60.0])  # 60 > 100 x the first epoch's 0.5
def test_a_final_run_that_diverges_keeps_its_best_epoch(bad):
    """docs/protocol.md, 'Final runs': under "stop" divergence ends the stage as patience would."""
    algo = Scripted([50, 70, 60, 65, 66], losses=[0.5, 0.4, 0.45, bad, 0.3])
    res = fit(algo, tiny_data(c=2), Stopping(10, 5), seed=0, on_divergence="stop")
    assert res.epochs == 4 and len(res.history) == 4 and res.best_epoch == 2
    assert algo.net.weight.item() == 2  # the best-validation weights, not the diverged ones
    assert len(res.diverged) == 1 and "stage all, epoch 4" in res.diverged[0]


def test_diagnostics_run_inside_the_meters_exclusion_and_out_of_the_stage_cpu_time():
    """Algorithm.epoch_metrics is a diagnostic: fit runs it inside `diagnostics()` (the meter takes
    that interval out of time and energy) and leaves its CPU time out of the stage's."""
    import contextlib

    class Diagnosed(Scripted):
        def epoch_metrics(self, stage, data):
            t = time.process_time()
            while time.process_time() - t < 0.2:
                pass
            return {"norm": 1.0}

    calls = []
    res = fit(Diagnosed([50, 60, 70]), tiny_data(c=2), Stopping(3, 3), seed=0,
              diagnostics=lambda: contextlib.nullcontext(calls.append(1)))
    assert len(calls) == 3 and all(r["norm"] == 1.0 for r in res.history)
    assert res.stage_cpu_s["all"] < 0.2  # three epochs of 0.2 s of diagnostics each: none counted
    fit(Scripted([50, 60]), tiny_data(c=2), Stopping(2, 2), seed=0, diagnostics=lambda: calls.append(2))
    assert 2 not in calls  # no epoch_metrics of its own: nothing to take out


def test_searches_keep_the_strict_divergence_rule():
    with pytest.raises(Diverged, match="inf"):
        fit(Scripted([50, 60], losses=[0.5, float("inf")]), tiny_data(c=2), Stopping(5, 2), seed=0)
    res = fit(Scripted([50, 60, 55], losses=[0.5, 60.0, 0.4]), tiny_data(c=2), Stopping(3, 5), seed=0)
    assert res.epochs == 3 and res.diverged == []  # a finite blow-up ends no trial


def test_a_final_run_that_learned_nothing_before_it_diverged_is_refused():
    """train.learned_nothing: at chance after 3 epochs, or at chance before a divergence at any
    epoch (a run that ends at epoch 2 is no smoke test)."""
    def run(accs, diverged):
        return FitResult(history=[{"train_loss": 0.5, "val_acc": a} for a in accs], diverged=diverged)

    assert learned_nothing(run([10.0, 12.0, 11.0], []), 10)
    assert not learned_nothing(run([10.0, 12.0], []), 10)  # too short to judge
    assert learned_nothing(run([10.0, 12.0], ["training loss rose ..."]), 10)
    assert not learned_nothing(run([10.0, 80.0], ["training loss rose ..."]), 10)


def test_a_final_run_diverging_in_its_first_epoch_is_refused():
    with pytest.raises(Diverged, match="kept no earlier epoch"):
        fit(Scripted([50, 60], losses=[float("nan"), 0.5]), tiny_data(c=2), Stopping(5, 2), seed=0,
            on_divergence="stop")
