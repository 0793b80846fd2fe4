"""Local losses (Nøkland and Eidnes 2019): the pred, sim and predsim losses against hand
computation, each layer's gradient against its own loss alone, locality, and learning on digits."""
from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F

from bpfree.algorithms.base import Cost, accuracy, generator
from bpfree.algorithms.local import LocalLoss, pred_pool, sim_loss, similarity
from bpfree.data import Data
from bpfree.engine import Stopping, fit
from bpfree.errors import ConfigError

MLP = {"type": "mlp", "widths": [7, 5]}
CNN = {"type": "cnn", "channels": [4, 6, 8]}
# Nøkland and Eidnes' MLP block: Linear -> BatchNorm -> LeakyReLU -> dropout
PAPER = {**MLP, "activation": "leaky_relu", "batchnorm": True, "dropout": 0.1}
PAPER_NO_DROP = {**PAPER, "dropout": 0.0}
META = {"n_classes": 3, "shape": [1, 8, 8], "augment": False}


def make(arch=MLP, **hp) -> LocalLoss:
    torch.manual_seed(0)
    return LocalLoss(arch, META, {"lr": 1e-2, "batch_size": 64, **hp}, "cpu")


def batch(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3


def randomise_heads(algo: LocalLoss) -> None:
    """Pred heads and the output layer start at zero weights; give them random ones so that their
    gradients reach the layers in the checks below."""
    g = torch.Generator().manual_seed(1)
    heads = [algo.net.out, *getattr(algo.net, "pred_heads", [])]
    with torch.no_grad():
        for h in heads:
            h.weight.copy_(torch.randn(h.weight.shape, generator=g) * 0.3)


# ---- the similarity matrix and the losses, by hand -----------------------------------------------

def hand_similarity(rows: list[list[float]]) -> torch.Tensor:
    """S by the formula, one entry at a time, unclamped."""
    def centred_unit(r):
        m = sum(r) / len(r)
        c = [v - m for v in r]
        n = math.sqrt(sum(v * v for v in c))
        return [v / (1e-8 + n) for v in c]
    u = [centred_unit(r) for r in rows]
    return torch.tensor([[sum(a * b for a, b in zip(ui, uj)) for uj in u] for ui in u])


def test_similarity_is_the_adjusted_cosine_and_is_clamped():
    x = torch.tensor([[1.0, 2.0, 4.0], [0.0, -1.0, 3.0], [2.0, 4.0, 8.0], [5.0, 5.0, 5.5]])
    torch.testing.assert_close(similarity(x), hand_similarity(x.tolist()).clamp(-1, 1))
    assert similarity(x)[0, 2] == pytest.approx(1.0, abs=1e-6)  # a scaled row is perfectly similar
    # one-hot labels: 1 within a class, -1 / (C - 1) across classes
    y = torch.tensor([0, 1, 0, 2])
    expect = torch.where(y[:, None] == y[None, :], 1.0, -1 / 2)
    torch.testing.assert_close(similarity(F.one_hot(y, 3).float()), expect)
    # the clamp: rounding puts some raw products above 1, S never is
    z = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    zc = z - z.mean(1, keepdim=True)
    raw = (zc / (1e-8 + zc.norm(dim=1, keepdim=True))) @ (zc / (1e-8 + zc.norm(dim=1, keepdim=True))).T
    assert (raw > 1).any()
    assert similarity(z).max() <= 1 and torch.equal(similarity(z), raw.clamp(-1, 1))


def test_similarity_of_feature_maps_uses_channel_std():
    x = torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    v = x.flatten(2)
    std = ((v - v.mean(2, keepdim=True)) ** 2).sum(2).div(9 - 1).sqrt()  # unbiased, as torch.std
    torch.testing.assert_close(similarity(x), hand_similarity(std.tolist()).clamp(-1, 1))
    # 3 channels or fewer, or maps of one row: flattened
    for shape in ((5, 3, 3, 3), (5, 8, 1, 1)):
        x = torch.randn(*shape)
        torch.testing.assert_close(similarity(x), hand_similarity(x.flatten(1).tolist()).clamp(-1, 1))


def hand_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.logsumexp(1) - logits[torch.arange(len(y)), y]).mean()


@pytest.mark.parametrize("loss, beta", [("pred", 0.99), ("sim", 0.99), ("predsim", 0.99), ("predsim", 0.7)])
def test_losses_match_hand_computation(loss, beta):
    algo = make(loss=loss, beta=beta)
    randomise_heads(algo)
    net, (x, y) = algo.net, batch()
    W = [(layer[0].weight.detach(), layer[0].bias.detach()) for layer in net.layers]
    Y = F.one_hot(y, 3).float()
    a, expect = x.flatten(1), []
    for i, (w, b) in enumerate(W):
        a = (a @ w.T + b).clamp(min=0)
        pred = sim = 0.0
        if loss != "sim":
            p = net.pred_heads[i]
            pred = hand_ce(a @ p.weight.detach().T + p.bias.detach(), y)
        if loss != "pred":
            s_h = hand_similarity((a @ net.sim_heads[i].weight.detach().T).tolist()).clamp(-1, 1)
            sim = ((s_h - hand_similarity(Y.tolist())) ** 2).sum() / len(y) ** 2
        expect.append({"pred": pred, "sim": sim, "predsim": (1 - beta) * pred + beta * sim}[loss])
    out = hand_ce(a @ net.out.weight.detach().T + net.out.bias.detach(), y)
    losses, got_out = algo.local_losses(x, y)
    for g, e in zip(losses, expect):
        torch.testing.assert_close(g.detach(), torch.as_tensor(e), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_out.detach(), (1 - beta) * out if loss == "predsim" else out)


# ---- gradients: each layer's is that of its own loss alone ---------------------------------------

def layer_params(net, i: int) -> list[torch.nn.Parameter]:
    """Layer i's parameters and its heads' (the parameters its local loss trains)."""
    mods = [net.layers[i]] + [getattr(net, n)[i] for n in ("pred_heads", "sim_heads") if hasattr(net, n)]
    return [p for m in mods for p in m.parameters()]


def ref_loss(loss, beta, h, y, pool, pred_head, sim_head):
    """A layer's local loss written from the definition (pool, heads: the layer's own)."""
    pred = F.cross_entropy(pred_head(pool(h).flatten(1)), y) if pred_head is not None else 0.0
    sim = 0.0
    if sim_head is not None:
        s = sim_head(h)
        if s.dim() == 4 and s.shape[1] > 3 and s.shape[2] > 1:
            s = s.flatten(2).std(2)
        s = s.flatten(1) - s.flatten(1).mean(1, keepdim=True)
        s = s / (1e-8 + s.norm(dim=1, keepdim=True))
        sim = ((s @ s.T).clamp(-1, 1) - similarity(F.one_hot(y, 3).float())).pow(2).mean()
    return {"pred": pred, "sim": sim, "predsim": (1 - beta) * pred + beta * sim}[loss]


@pytest.mark.parametrize("arch", [MLP, CNN, PAPER_NO_DROP], ids=["mlp", "cnn", "mlp-bn-leaky"])
@pytest.mark.parametrize("loss", ["pred", "sim", "predsim"])
def test_each_layer_gradient_is_that_of_its_own_loss(arch, loss):
    """The algorithm's training step (one full batch) leaves in every layer's and head's .grad the
    gradient of that layer's loss alone, computed on an isolated copy of the layer whose input
    is the previous layers' output as a constant."""
    algo = make(arch, loss=loss, beta=0.9 if loss == "predsim" else 0.99, batch_size=64)
    randomise_heads(algo)
    ref = copy.deepcopy(algo.net)
    x, y = batch()
    data = Data(x, y, x, y, x, y, META)
    algo.train_epoch(algo.stages()[0], data, generator(torch.device("cpu"), 0))  # one batch: all 12 rows
    ref.train()
    h = x if arch["type"] == "cnn" else x.flatten(1)
    beta = algo.hp.beta
    for i in range(len(ref.layers)):
        with torch.no_grad():
            h_in = h.clone()
        h = ref.layers[i](h_in)
        pred = ref.pred_heads[i] if loss != "sim" else None
        sim = ref.sim_heads[i] if loss != "pred" else None
        pool = ref.pools[i] if loss != "sim" else torch.nn.Identity()
        grads = torch.autograd.grad(ref_loss(loss, beta, h, y, pool, pred, sim), layer_params(ref, i))
        got = [p.grad for p in layer_params(algo.net, i)]
        assert len(got) == len(grads)
        for g, e in zip(got, grads):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
        h = h.detach()
    out = F.cross_entropy(ref.out(h.flatten(1)), y) * ((1 - beta) if loss == "predsim" else 1)
    expect = torch.autograd.grad(out, list(ref.out.parameters()))
    for g, e in zip((algo.net.out.weight.grad, algo.net.out.bias.grad), expect):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_mlp_pred_gradient_by_hand():
    """Layer 2's pred gradient written out: dW2 = ((softmax(a2 P^T + c) - Y) / B P * 1[z2 > 0])^T a1."""
    algo = make(loss="pred")
    randomise_heads(algo)
    net, (x, y) = algo.net, batch()
    (W1, b1), (W2, b2) = [(layer[0].weight.detach(), layer[0].bias.detach()) for layer in net.layers]
    P, c = net.pred_heads[1].weight.detach(), net.pred_heads[1].bias.detach()
    a1 = (x.flatten(1) @ W1.T + b1).clamp(min=0)
    z2 = a1 @ W2.T + b2
    a2 = z2.clamp(min=0)
    e = ((a2 @ P.T + c).softmax(1) - F.one_hot(y, 3).float()) / len(y)
    dz2 = (e @ P) * (z2 > 0)
    losses, out = algo.local_losses(x, y)
    sum(losses, out).backward()
    torch.testing.assert_close(net.layers[1][0].weight.grad, dz2.T @ a1, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(net.layers[1][0].bias.grad, dz2.sum(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(net.pred_heads[1].weight.grad, e.T @ a2, rtol=1e-5, atol=1e-7)


# ---- locality ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", [MLP, CNN, PAPER], ids=["mlp", "cnn", "mlp-paper"])
@pytest.mark.parametrize("loss", ["pred", "sim", "predsim"])
@pytest.mark.locality("local")
def test_no_gradient_of_a_layer_loss_reaches_an_earlier_layer(arch, loss):
    algo = make(arch, loss=loss)
    randomise_heads(algo)
    net = algo.net
    losses, out = algo.local_losses(*batch())
    L = len(net.layers)
    groups = [layer_params(net, j) for j in range(L)] + [list(net.out.parameters())]
    for i, li in enumerate([*losses, out]):
        for j, params in enumerate(groups):
            grads = torch.autograd.grad(li, params, retain_graph=True, allow_unused=True)
            if j == i:
                assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None for g in grads), f"the loss of layer {i + 1} reached layer {j + 1}"


# ---- settings, shapes, cost ----------------------------------------------------------------------

def test_settings_rules():
    with pytest.raises(ConfigError, match="beta"):
        make(loss="pred", beta=0.5)
    with pytest.raises(ConfigError, match="weight_decay"):
        make(weight_decay=1e-4)  # optimizer adam takes l2
    with pytest.raises(ConfigError, match="l2"):
        make(optimizer="adamw", l2=1e-4)
    assert isinstance(make(optimizer="adamw", weight_decay=1e-4).opt, torch.optim.AdamW)
    assert make(l2=1e-4).hp.optimizer_label() == "Adam (L2 penalty)"
    algo = make(loss="pred")
    assert not hasattr(algo.net, "sim_heads") and not hasattr(make(loss="sim").net, "pred_heads")


def test_heads_start_at_zero_and_nonlin_option():
    algo = make(CNN, loss="predsim", nonlin="leakyrelu")
    assert all(torch.all(h.weight == 0) for h in (*algo.net.pred_heads, algo.net.out))
    assert all(isinstance(b[1], torch.nn.LeakyReLU) and b[1].negative_slope == 0.01 for b in algo.net.layers)
    assert all(s.bias is None and s.kernel_size == (3, 3) for s in algo.net.sim_heads)
    assert isinstance(make(MLP).net.layers[0][1], torch.nn.ReLU)


# ---- the paper's MLP block (architecture options) ------------------------------------------------

def test_paper_block_order_and_the_plain_default():
    """Linear -> BatchNorm1d -> LeakyReLU(0.01) per layer, dropout between layers; a plain entry, or
    one that spells out the plain values, builds the plain network with the same state_dict."""
    net = make(PAPER).net
    assert all([type(m) for m in layer] == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.LeakyReLU]
               for layer in net.layers)
    assert net.layers[0][2].negative_slope == 0.01
    assert isinstance(net.drop, torch.nn.Dropout) and net.drop.p == 0.1
    plain, spelt = make(MLP), make({**MLP, "activation": "relu", "batchnorm": False, "dropout": 0.0})
    assert isinstance(plain.net.drop, torch.nn.Identity) and len(plain.net.layers[0]) == 2
    assert all(torch.equal(v, spelt.net.state_dict()[k]) for k, v in plain.net.state_dict().items())
    assert plain.net.state_dict().keys() == spelt.net.state_dict().keys()
    # nonlin leakyrelu still replaces ReLU on a plain entry; relu keeps the architecture's activation
    assert isinstance(make(MLP, nonlin="leakyrelu").net.layers[0][1], torch.nn.LeakyReLU)
    assert isinstance(make(PAPER, nonlin="relu").net.layers[0][2], torch.nn.LeakyReLU)


@pytest.mark.parametrize("loss", ["pred", "predsim"])
def test_local_losses_see_a_layer_before_dropout_and_the_layers_above_after(loss):
    """As the code's LocalLossBlockLinear.forward: the heads take h, the next layer and the output
    layer take dropout(h)."""
    algo = make({**PAPER, "dropout": 0.5}, loss=loss)
    randomise_heads(algo)
    net, (x, y) = algo.net, batch()
    net.train()
    torch.manual_seed(3)
    losses, out = algo.local_losses(x, y)
    torch.manual_seed(3)  # the same dropout masks, by hand
    beta, s_y = algo.hp.beta, similarity(F.one_hot(y, 3).float())
    a, expect = x.flatten(1), []
    for i, layer in enumerate(net.layers):
        h = layer(a)
        a = F.dropout(h, 0.5, training=True)
        pred = F.cross_entropy(net.pred(i, h), y)
        expect.append(pred if loss == "pred" else (1 - beta) * pred + beta * sim_loss(net.sim_heads[i](h), s_y))
    scale = (1 - beta) if loss == "predsim" else 1.0
    for g, e in zip([*losses, out], [*expect, scale * F.cross_entropy(net.out(a), y)]):
        torch.testing.assert_close(g, e)
    net.eval()  # no dropout at prediction
    assert torch.equal(algo.predict(x), algo.predict(x))


def test_paper_options_are_refused_by_algorithms_that_build_the_plain_network():
    from bpfree import algorithms, models
    from bpfree.algorithms.base import check_architecture

    for impl in ("bp", "local"):
        check_architecture(algorithms.get(impl), PAPER, "here")
    for impl in ("mf", "fa", "dfa", "ff", "pepita", "fwdgrad", "elm"):
        with pytest.raises(ConfigError, match=f"here: {impl} builds the plain mlp network and does not implement "
                                              "activation: leaky_relu, batchnorm: true, dropout: 0.1"):
            check_architecture(algorithms.get(impl), PAPER, "here")
    check_architecture(algorithms.get("mf"), {**MLP, "batchnorm": False, "dropout": 0}, "here")  # plain values
    for bad, error in (({"dropout": 1.0}, "dropout = 1.0"), ({"activation": "tanh"}, "activation = 'tanh'")):
        with pytest.raises(ValueError, match=re.escape(error)):
            models.check({**MLP, **bad})
    with pytest.raises(ValueError, match="`batchnorm` is a mlp key, not one of type cnn"):
        models.check({**CNN, "batchnorm": True})


def test_bp_builds_the_paper_block():
    """bp's network on the paper's entry, in evaluation mode, against the formula: per layer
    leaky_relu((W a + b - mean) / sqrt(var + eps) * gamma + beta), dropout off, then the head."""
    from bpfree import models

    torch.manual_seed(0)
    net = models.build(PAPER, (1, 8, 8), 3)
    with torch.no_grad():  # non-trivial statistics and affine parameters
        for bn in net.norms:
            for t in (bn.running_mean, bn.weight, bn.bias):
                t.copy_(torch.randn(t.shape))
            bn.running_var.copy_(torch.rand(bn.running_var.shape) + 0.5)
    net.eval()
    x, _ = batch()
    a = x.flatten(1)
    for layer, bn in zip(net.hidden, net.norms):
        z = (a @ layer.weight.T + layer.bias - bn.running_mean) / (bn.running_var + bn.eps).sqrt()
        z = z * bn.weight + bn.bias
        a = torch.where(z > 0, z, 0.01 * z)
    torch.testing.assert_close(net(x), a @ net.head.weight.T + net.head.bias)
    plain = models.build(MLP, (1, 8, 8), 3)
    assert set(plain.state_dict()) == {"hidden.0.weight", "hidden.0.bias", "hidden.1.weight", "hidden.1.bias",
                                       "head.weight", "head.bias"} and plain.drop is None


def test_pred_pool_bounds_the_flattened_size_as_the_code():
    # MNIST's first block (32 x 14 x 14 = 6272 > 4096): heights pooled by 2 only, as the code does
    pool, n = pred_pool(32, 14, 14, 4096)
    assert pool.kernel_size == (2, 1) and n == 32 * 7 * 14
    assert pred_pool(128, 2, 2, 4096) == (None, 512)
    for c, h, w, bound in ((64, 32, 32, 4096), (32, 7, 7, 100), (6, 4, 4, 30)):
        pool, n = pred_pool(c, h, w, bound)
        assert n <= bound and pool(torch.zeros(1, c, h, w)).numel() == n
    algo = make(CNN, loss="pred", pred_dim=30)  # block 1 output 4 x 4 x 4 = 64 > 30
    assert algo.net.pred_heads[0].in_features <= 30
    algo.local_losses(*batch())


def test_cost_counts_layers_heads_and_similarities():
    meta = {"n_classes": 10, "shape": [1, 28, 28]}
    arch = {"type": "mlp", "widths": [1000, 1000]}
    hp = {"lr": 1e-3, "batch_size": 128}
    layers = 784 * 1000 + 1000 * 1000
    pred = LocalLoss(arch, meta, {**hp, "loss": "pred"}, "cpu")
    assert pred.cost(pred.stages()[0]) == Cost(train=2 * layers + 3 * 2 * 10_000 + 2 * 10_000,
                                               eval=layers + 10_000)
    ps = LocalLoss(arch, meta, {**hp, "loss": "predsim"}, "cpu")
    sims = 3 * 2 * 1000 * 1000 + 2 * (2 * 128 * 1000 + 128 * 10)
    assert ps.cost(ps.stages()[0]).train == pred.cost(pred.stages()[0]).train + sims


# ---- learning ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch, loss", [
    ({"type": "mlp", "widths": [128, 128]}, "pred"),
    ({"type": "mlp", "widths": [128, 128]}, "predsim"),
    ({"type": "cnn", "channels": [16, 32, 64]}, "pred"),
    ({"type": "cnn", "channels": [16, 32, 64]}, "predsim"),
], ids=["mlp-pred", "mlp-predsim", "cnn-pred", "cnn-predsim"])
def test_learns_digits(digits, arch, loss):
    torch.manual_seed(0)
    algo = LocalLoss(arch, digits.meta, {"lr": 3e-3, "batch_size": 64, "loss": loss}, "cpu")
    res = fit(algo, digits, Stopping(max_epochs=25, patience=5), seed=0)
    acc = accuracy(algo.predict(digits.x_test), digits.y_test)
    assert acc > 90.0, f"{arch['type']} {loss}: {acc:.1f}%"
    assert res.macs > 0
    layers = algo.layer_accuracies(digits.x_test, digits.y_test)
    assert len(layers) == len(algo.net.layers) and min(layers.values()) > 50.0


def test_predsim_learns_digits_on_the_paper_network(digits):
    """Nøkland and Eidnes' MLP block (BatchNorm, LeakyReLU, dropout 0.1), their lr 5e-4."""
    torch.manual_seed(0)
    arch = {"type": "mlp", "widths": [256, 256, 256], "activation": "leaky_relu", "batchnorm": True, "dropout": 0.1}
    algo = LocalLoss(arch, digits.meta, {"lr": 5e-4, "batch_size": 64, "loss": "predsim"}, "cpu")
    res = fit(algo, digits, Stopping(max_epochs=25, patience=5), seed=0)
    acc = accuracy(algo.predict(digits.x_test), digits.y_test)
    assert acc > 90.0, f"{acc:.1f}% (history {res.history[-3:]})"
