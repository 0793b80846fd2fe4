"""fa and dfa: their gradients against hand-computed formulas with the fixed feedback matrices B
(MLP and CNN), their locality, B fixed and kept by checkpoints, the DFA code shared with cafo-dfa,
and that each learns real digits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bpfree import algorithms, checkpoint, models
from bpfree.algorithms import cafo, dfa
from bpfree.algorithms.base import Cost, Stage, accuracy
from bpfree.data import Data
from bpfree.engine import Stopping, fit

CPU = torch.device("cpu")
MLP = {"type": "mlp", "widths": [5, 4]}
CNN = {"type": "cnn", "channels": [2, 3, 4]}
HP = {"lr": 1e-2, "weight_decay": 0.0, "batch_size": 16}


def tiny_data(shape=(1, 1, 6), n=16, c=3, seed=0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.arange(n) % c
    meta = {"dataset": "tiny", "n_classes": c, "shape": list(shape), "augment": False}
    return Data(x, y, x[:8], y[:8], x[:8], y[:8], meta)


def make(name: str, arch: dict, data: Data, seed: int = 0, **hp):
    torch.manual_seed(seed)
    return algorithms.get(name)(arch, data.meta, {**HP, **hp}, CPU)


def grads_of(algo, loss_fn) -> dict[str, torch.Tensor]:
    """The .grad of every parameter that got one from one call of `loss_fn` (which sets them, or
    returns a loss to backpropagate)."""
    algo.net.zero_grad(set_to_none=True)
    loss = loss_fn()
    if loss.requires_grad:
        loss.backward()
    return {k: p.grad.clone() for k, p in algo.net.named_parameters() if p.grad is not None}


def bp_grads(algo, x, y) -> dict[str, torch.Tensor]:
    """Backpropagation's gradients of the same network (autograd through the plain forward)."""
    return grads_of(algo, lambda: F.cross_entropy(algo.net(x), y))


def fa_grads(algo, x, y):
    return grads_of(algo, lambda: F.cross_entropy(algo.logits(x), y))


def dfa_grads(algo, x, y):
    return grads_of(algo, lambda: algo.step(x, y))


def error(logits, y):
    """e = (softmax - onehot) / N, by hand."""
    return (logits.softmax(1) - F.one_hot(y, logits.shape[1]).float()) / len(y)


def conv_weight_grad(a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """dW[o, i, u, v] = sum_{n, h, w} delta[n, o, h, w] a_pad[n, i, h + u, w + v] (3x3, padding 1),
    written out with unfold rather than torch's convolution backward."""
    n, c_in, h, w = a.shape
    cols = F.unfold(a, 3, padding=1).view(n, c_in * 9, h * w)           # (N, C_in*9, H*W)
    return torch.einsum("noh,nkh->ok", delta.flatten(2), cols).view(delta.shape[1], c_in, 3, 3)


def conv_input_grad(delta: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The input gradient of a 3x3 padding-1 convolution whose kernel is `kernel`: the transposed
    convolution of delta with it (checked against the weight's own in the BP case below)."""
    return F.conv_transpose2d(delta, kernel, padding=1)


def block_tail(block, z: torch.Tensor, grad_out: torch.Tensor):
    """Through ReLU -> max-pool -> BatchNorm of a conv block (exact, as in backprop): the gradient
    at the conv output z and the BatchNorm parameters' gradients, for `grad_out` at the block output."""
    _, relu, pool, bn = block
    z = z.detach().requires_grad_()
    out = bn(pool(relu(z)))
    dz, dg, db = torch.autograd.grad(out, [z, bn.weight, bn.bias], grad_out)
    return dz, dg, db


def check(got: dict, want: dict, bp: dict, differ) -> None:
    """Every gradient equals the hand-computed one; the output layer's is backprop's, and those
    named in `differ` are not."""
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["head.weight"], bp["head.weight"])
    torch.testing.assert_close(got["head.bias"], bp["head.bias"])
    for k in differ:
        assert not torch.allclose(got[k], bp[k], rtol=0.1, atol=1e-4), k


@torch.no_grad()
def cnn_pieces(algo, x, y):
    """A plain forward pass of the CNN by pieces: the last block's output, every conv output z_l,
    every block input, and the output error e."""
    a, zs, ins = x, [], []
    for block in algo.net.blocks:
        ins.append(a)
        zs.append(block[0](a))
        a = block[3](block[2](block[1](zs[-1])))
    return a, zs, ins, error(algo.net.head(a.flatten(1)), y)


# ---- fa: gradients ---------------------------------------------------------------------------------

def fa_mlp_reference(algo, x, y, B: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Lillicrap et al.: delta_l = (delta_{l+1} B_{l+1}) * relu'(z_l), dW_l = delta_l^T a_{l-1}."""
    (W1, b1), (W2, b2) = [(l.weight.detach(), l.bias.detach()) for l in algo.net.hidden]
    W3, b3 = algo.net.head.weight.detach(), algo.net.head.bias.detach()
    z1 = x @ W1.T + b1; a1 = z1.clamp(min=0)  # noqa: E702
    z2 = a1 @ W2.T + b2; a2 = z2.clamp(min=0)  # noqa: E702
    d3 = error(a2 @ W3.T + b3, y)
    d2 = (d3 @ B[2]) * (z2 > 0)
    d1 = (d2 @ B[1]) * (z1 > 0)
    return {"hidden.0.weight": d1.T @ x, "hidden.0.bias": d1.sum(0), "hidden.1.weight": d2.T @ a1,
            "hidden.1.bias": d2.sum(0), "head.weight": d3.T @ a2, "head.bias": d3.sum(0)}


def test_fa_mlp_gradients_equal_the_formula_with_fixed_B_and_differ_from_backprop():
    data = tiny_data()
    algo = make("fa", MLP, data)
    x, y = data.x_train.flatten(1), data.y_train
    assert [algo.feedback(l).shape for l in (1, 2)] == [algo.net.hidden[1].weight.shape, algo.net.head.weight.shape]
    assert not hasattr(algo.net, "feedback0")  # the first layer's input gradient is never needed
    got = fa_grads(algo, x, y)
    bp = bp_grads(algo, x, y)
    check(got, fa_mlp_reference(algo, x, y, {l: algo.feedback(l) for l in (1, 2)}), bp,
          differ=("hidden.0.weight", "hidden.1.weight"))
    # with B = W (weight transport), the same code is backprop: B is the only difference
    with torch.no_grad():
        algo.feedback(1).copy_(algo.net.hidden[1].weight)
        algo.feedback(2).copy_(algo.net.head.weight)
    for k, g in fa_grads(algo, x, y).items():
        torch.testing.assert_close(g, bp[k], rtol=1e-5, atol=1e-6)


def test_fa_cnn_gradients_equal_the_formula_with_fixed_kernels_and_differ_from_backprop():
    data = tiny_data(shape=(1, 8, 8), n=12)
    algo = make("fa", CNN, data)
    algo.net.train()
    x, y = data.x_train, data.y_train
    blocks, head = algo.net.blocks, algo.net.head
    for l in (1, 2):
        assert algo.feedback(l).shape == blocks[l][0].weight.shape
    state = {k: v.clone() for k, v in algo.net.state_dict().items()}
    got = fa_grads(algo, x, y)
    algo.net.load_state_dict(state)  # BatchNorm's running statistics moved: undo
    # the reference: forward by pieces, then delta down through B (kernels, head matrix) by hand
    a, zs, ins, e = cnn_pieces(algo, x, y)
    want = {"head.weight": e.T @ a.flatten(1), "head.bias": e.sum(0)}
    grad_out = (e @ algo.feedback(3)).view_as(a)
    for l in (2, 1, 0):
        dz, dg, db = block_tail(blocks[l], zs[l], grad_out)
        want[f"blocks.{l}.0.weight"] = conv_weight_grad(ins[l], dz)
        want[f"blocks.{l}.3.weight"], want[f"blocks.{l}.3.bias"] = dg, db
        if l:
            grad_out = conv_input_grad(dz, algo.feedback(l))
    algo.net.load_state_dict(state)
    bp = bp_grads(algo, x, y)
    check(got, want, bp, differ=("blocks.0.0.weight", "blocks.1.0.weight"))
    # the hand-written input gradient is backprop's own when its kernel is the weight
    with torch.no_grad():
        for l in (1, 2):
            algo.feedback(l).copy_(blocks[l][0].weight)
        algo.feedback(3).copy_(head.weight)
    algo.net.load_state_dict({**algo.net.state_dict(), **{k: v for k, v in state.items() if "running" in k}})
    for k, g in fa_grads(algo, x, y).items():
        torch.testing.assert_close(g, bp[k], rtol=1e-4, atol=1e-6)


@pytest.mark.locality("fa")
def test_fa_error_reaches_a_layer_only_through_the_B_above_it():
    data = tiny_data()
    algo = make("fa", MLP, data)
    x, y = data.x_train.flatten(1), data.y_train
    before = fa_grads(algo, x, y)
    with torch.no_grad():  # the forward weight above layer 1 changes, its feedback does not
        algo.net.hidden[1].weight.mul_(-1.0)
    after = fa_grads(algo, x, y)
    want = fa_mlp_reference(algo, x, y, {l: algo.feedback(l) for l in (1, 2)})
    torch.testing.assert_close(after["hidden.0.weight"], want["hidden.0.weight"], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        algo.feedback(2).zero_()  # cut the only path from the error down to layers 2 and 1
    cut = fa_grads(algo, x, y)
    assert all(torch.all(cut[k] == 0) for k in ("hidden.0.weight", "hidden.1.weight", "hidden.0.bias"))
    assert torch.all(cut["head.weight"] == after["head.weight"]) and before["head.weight"].abs().sum() > 0


# ---- dfa: gradients --------------------------------------------------------------------------------

def test_dfa_mlp_gradients_equal_the_formula_with_fixed_B_and_differ_from_backprop():
    data = tiny_data()
    algo = make("dfa", MLP, data)
    x, y = data.x_train.flatten(1), data.y_train
    assert [algo.feedback(l).shape for l in (0, 1)] == [(3, 5), (3, 4)]
    (W1, b1), (W2, b2) = [(l.weight.detach(), l.bias.detach()) for l in algo.net.hidden]
    W3, b3 = algo.net.head.weight.detach(), algo.net.head.bias.detach()
    z1 = x @ W1.T + b1; a1 = z1.clamp(min=0)  # noqa: E702
    z2 = a1 @ W2.T + b2; a2 = z2.clamp(min=0)  # noqa: E702
    e = error(a2 @ W3.T + b3, y)
    d1 = (e @ algo.feedback(0)) * (z1 > 0)  # Nøkland: delta_l = (B_l e) * f'(z_l), straight from e
    d2 = (e @ algo.feedback(1)) * (z2 > 0)
    want = {"hidden.0.weight": d1.T @ x, "hidden.0.bias": d1.sum(0), "hidden.1.weight": d2.T @ a1,
            "hidden.1.bias": d2.sum(0), "head.weight": e.T @ a2, "head.bias": e.sum(0)}
    bp = bp_grads(algo, x, y)
    check(dfa_grads(algo, x, y), want, bp, differ=("hidden.0.weight", "hidden.1.weight"))
    # the last hidden layer with B_L = W_head gets backprop's gradient (FA and DFA agree there)
    with torch.no_grad():
        algo.feedback(1).copy_(W3)
    g = dfa_grads(algo, x, y)
    torch.testing.assert_close(g["hidden.1.weight"], bp["hidden.1.weight"], rtol=1e-5, atol=1e-6)


def test_dfa_cnn_gradients_equal_the_formula_with_fixed_B_and_differ_from_backprop():
    data = tiny_data(shape=(1, 8, 8), n=12)
    algo = make("dfa", CNN, data)
    algo.net.train()
    x, y = data.x_train, data.y_train
    flat = models.cnn_flat(CNN["channels"], (1, 8, 8))
    assert [algo.feedback(l).shape for l in range(3)] == [(3, f) for f in flat]  # e -> the whole map
    state = {k: v.clone() for k, v in algo.net.state_dict().items()}
    got = dfa_grads(algo, x, y)
    algo.net.load_state_dict(state)
    blocks = algo.net.blocks
    a, zs, ins, e = cnn_pieces(algo, x, y)
    want = {"head.weight": e.T @ a.flatten(1), "head.bias": e.sum(0)}
    for l in range(3):  # block l's output gets e B_l, straight from the error
        grad_out = (e @ algo.feedback(l)).view(len(x), CNN["channels"][l], *[8 >> (l + 1)] * 2)
        dz, dg, db = block_tail(blocks[l], zs[l], grad_out)
        want[f"blocks.{l}.0.weight"] = conv_weight_grad(ins[l], dz)
        want[f"blocks.{l}.3.weight"], want[f"blocks.{l}.3.bias"] = dg, db
    algo.net.load_state_dict(state)
    check(got, want, bp_grads(algo, x, y), differ=[f"blocks.{l}.0.weight" for l in range(3)])


@pytest.mark.locality("dfa")
def test_dfa_no_gradient_passes_between_layers():
    data = tiny_data()
    algo = make("dfa", MLP, data)
    x, y = data.x_train.flatten(1), data.y_train
    before = dfa_grads(algo, x, y)
    with torch.no_grad():
        algo.feedback(1).zero_()  # layer 2 receives no error now ...
    after = dfa_grads(algo, x, y)
    assert torch.all(after["hidden.1.weight"] == 0)
    for k in ("hidden.0.weight", "hidden.0.bias", "head.weight"):  # ... and layer 1 does not notice
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)


# ---- fixed B, checkpoints, cost --------------------------------------------------------------------

def feedbacks(algo) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in algo.net.named_buffers() if k.startswith("feedback")}


@pytest.mark.parametrize("name, arch", [("fa", MLP), ("fa", CNN), ("dfa", MLP), ("dfa", CNN)])
def test_feedback_is_fixed_and_kept_by_a_checkpoint_round_trip(name, arch):
    data = tiny_data(shape=(1, 8, 8) if arch is CNN else (1, 1, 6))
    algo = make(name, arch, data)
    B = feedbacks(algo)
    assert B and not any(k.startswith("feedback") for k, _ in algo.net.named_parameters())
    w = algo.net.head.weight.clone()
    fit(algo, data, Stopping(max_epochs=2, patience=2), seed=0)
    assert not torch.equal(w, algo.net.head.weight)  # it trained ...
    for k, v in feedbacks(algo).items():
        assert torch.equal(v, B[k]), k  # ... and B did not move
    state = checkpoint.algo_state(algo)
    other = make(name, arch, data, seed=1)
    assert any(not torch.equal(v, B[k]) for k, v in feedbacks(other).items())
    checkpoint.load_algo_state(other, state)
    for k, v in feedbacks(other).items():
        assert torch.equal(v, B[k]), k
    torch.testing.assert_close(other.predict(data.x_test), algo.predict(data.x_test))


def test_dfa_feedback_init_options():
    data = tiny_data()
    uniform = make("dfa", {"type": "mlp", "widths": [400]}, data).feedback(0)
    assert uniform.abs().max() <= 400 ** -0.5 and uniform.abs().max() > 0.95 * 400 ** -0.5
    rows = make("dfa", MLP, data, feedback_init="unit-rows").feedback(0)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="feedback_init"):
        make("dfa", MLP, data, feedback_init="gaussian")


def test_fa_feedback_draws_from_the_weights_initialiser():
    data = tiny_data(shape=(1, 28, 28))
    algo = make("fa", {"type": "mlp", "widths": [300, 300]}, data)
    hidden, head = algo.feedback(1), algo.feedback(2)
    assert hidden.abs().max() <= (6 / 300) ** 0.5 and hidden.abs().max() > 0.95 * (6 / 300) ** 0.5
    assert head.abs().max() <= 300 ** -0.5 and head.abs().max() > 0.9 * 300 ** -0.5
    assert not torch.equal(hidden, algo.net.hidden[1].weight)


def test_cost_and_locality():
    meta = {"n_classes": 10, "shape": [1, 28, 28]}
    arch = {"type": "mlp", "widths": [1000, 1000]}
    hp = {"lr": 1e-3, "batch_size": 1}
    fa, d, bp = (algorithms.get(n)(arch, meta, hp, CPU) for n in ("fa", "dfa", "bp"))
    fwd = 784 * 1000 + 1000 * 1000 + 1000 * 10
    assert fa.cost(Stage("all")) == bp.cost(Stage("all")) == Cost(train=3 * fwd - 784_000, eval=fwd)
    assert d.cost(Stage("all")) == Cost(train=2 * fwd + 10 * 2000, eval=fwd)
    assert fa.predict_macs() == d.predict_macs() == fwd
    assert fa.locality == d.locality == "feedback-alignment"
    assert fa.hp.optimizer_label() == d.hp.optimizer_label() == bp.hp.optimizer_label()


# ---- one DFA implementation, shared with cafo-dfa --------------------------------------------------

def test_cafo_dfa_phase_runs_dfas_code_and_matches_dfa_on_the_cnn(monkeypatch):
    assert cafo.dfa_backward is dfa.dfa_backward and cafo.register_feedback is dfa.register_feedback
    data = tiny_data(shape=(1, 8, 8), n=12, c=10)
    torch.manual_seed(0)
    c = cafo.CaFo(CNN, data.meta, {"batch_size": 12, "lr": 1e-2, "block": "dfa", "dfa_epochs": 1, "dfa_lr": 1e-3},
                  CPU)
    d = make("dfa", CNN, data, feedback_init="unit-rows")
    # the same weights, the same B for blocks 1 and 2, cafo's aux head as dfa's output layer
    d.net.blocks.load_state_dict(c.net.blocks.state_dict())
    d.net.head.load_state_dict(c.net.aux.state_dict())
    for k in (0, 1):
        d.feedback(k).copy_(c.net.feedback(k))
    x, y = data.x_train, data.y_train
    calls = []
    monkeypatch.setattr(cafo, "dfa_backward", lambda *a: calls.append(1) or dfa.dfa_backward(*a))
    c.net.train()
    d.net.train()
    gc = grads_of(c, lambda: c.dfa_backward(x, y))
    assert calls == [1]
    gd = dfa_grads(d, x, y)
    for k in ("0.0.weight", "0.3.weight", "0.3.bias", "1.0.weight", "1.3.bias"):
        torch.testing.assert_close(gc[f"blocks.{k}"], gd[f"blocks.{k}"], rtol=0, atol=0)
    torch.testing.assert_close(gc["aux.weight"], gd["head.weight"], rtol=0, atol=0)
    # the last block: backprop through the aux head in cafo (its rule), B_3 e in dfa (Nøkland)
    assert not torch.allclose(gc["blocks.2.0.weight"], gd["blocks.2.0.weight"])


def test_jobs_rerun_when_a_module_the_algorithm_imports_changes():
    """The workflow declares these files as a job's inputs (workflow/rules/common.smk, algo_src)."""
    def names(impl):
        files = [p.name for p in algorithms.with_imports(algorithms.source_file(impl))]
        assert files[0] == f"{impl}.py" and len(set(files)) == len(files)
        return set(files)

    assert names("cafo") == {"cafo.py", "dfa.py", "fa.py", "bp.py"}
    assert names("fa") == {"fa.py", "bp.py"} and names("dfa") == {"dfa.py", "fa.py", "bp.py"}
    assert names("bp") == {"bp.py"} and names("mf") == {"mf.py"}


# ---- learns ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, arch, hp", [
    ("fa", {"type": "mlp", "widths": [128, 128]}, {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 64}),
    ("dfa", {"type": "mlp", "widths": [128, 128]}, {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 64}),
    ("fa", {"type": "cnn", "channels": [16, 32, 64]}, {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 128}),
    ("dfa", {"type": "cnn", "channels": [16, 32, 64]}, {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 128}),
])
def test_learns_real_digits(digits, name, arch, hp):
    torch.manual_seed(0)
    algo = algorithms.get(name)(arch, digits.meta, hp, CPU)
    res = fit(algo, digits, Stopping(max_epochs=25, patience=5), seed=0)
    test_acc = accuracy(algo.predict(digits.x_test), digits.y_test)
    assert test_acc > 90.0, (name, arch, test_acc)
    assert res.val_acc > 90.0 and res.macs > 0

