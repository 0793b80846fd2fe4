"""CwComp: the channel-wise goodness and loss against hand computations, each layer's gradient
against its own loss alone, locality, the ILT schedule, the cwc-cnn architecture, and learning
on digits."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bpfree import models
from bpfree.algorithms.base import Stage, accuracy, generator
from bpfree.algorithms.bp import BP
from bpfree.algorithms.cwcomp import CwComp, class_goodness, cwc_loss
from bpfree.data import Data
from bpfree.engine import Stopping, fit
from bpfree.errors import ConfigError

C = 3
META = {"n_classes": C, "shape": [1, 4, 4], "augment": False}
ARCH = {"type": "cwc-cnn", "channels": [6, 6, 9]}  # pools after layer 2 (paper's pattern)
HP = {"lr": 1e-2, "batch_size": 8}


def make(arch=ARCH, **hp) -> CwComp:
    torch.manual_seed(0)
    return CwComp(arch, META, {**HP, **hp}, "cpu")


def tiny_data(n=8) -> Data:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = torch.arange(n) % C
    return Data(x, y, x, y, x, y, META)


def test_goodness_and_loss_match_hand_computation():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 6, 2, 2, generator=g)  # 3 classes, groups of 2 channels
    y = torch.tensor([2, 0])
    # class c owns channels 2c, 2c+1; goodness = mean over its 2 x 2 x 2 values of h^2
    G = torch.tensor([[sum(h[b, 2 * c + k, i, j].item() ** 2 for k in range(2) for i in range(2) for j in range(2)) / 8
                       for c in range(3)] for b in range(2)])
    torch.testing.assert_close(class_goodness(h, 3), G)
    expected = -sum(G[b, y[b]] - torch.logsumexp(G[b], 0) for b in range(2)) / 2
    torch.testing.assert_close(cwc_loss(h, y, 3), expected)


def test_each_layer_grad_equals_its_own_loss_gradient_alone():
    """One training batch: the .grad of every layer equals the gradient of that layer's CwC loss
    computed on a copy of the layer in isolation, fed the (detached) output of the layers below."""
    algo, data = make(), tiny_data()
    x, y = data.x_train, data.y_train
    ref = models.cwc_layers(ARCH, (1, 4, 4))
    ref.load_state_dict(algo.net.state_dict())
    ref.train()
    expected, h = [], x
    for layer in ref:  # each layer alone: its input is a plain tensor, no graph
        out = layer(h.clone())
        expected.append(torch.autograd.grad(cwc_loss(out, y, C), list(layer.parameters())))
        h = out.detach()
    algo.net.train()
    algo.opt.zero_grad()
    algo._losses(x, y, 0).backward()
    for k, layer in enumerate(algo.net):
        for p, e in zip(layer.parameters(), expected[k]):
            torch.testing.assert_close(p.grad, e)


def test_conv_weight_gradient_matches_a_hand_formula():
    """Layer 1 alone (Conv -> ReLU -> BatchNorm, no pooling), the convolution's gradient by hand:
    dL/dG = (softmax(G) - onehot) / B; dL/dh = dL/dG_c * 2 h / (group size); back through the
    batch-norm (batch statistics) and the ReLU; the weight gradient is the correlation of that
    with the unfolded input."""
    algo, data = make(), tiny_data()
    x, y = data.x_train.double(), data.y_train
    layer = algo.net[0].double().train()
    conv, bn = layer[0], layer[2]
    W, b = conv.weight.detach(), conv.bias.detach()
    gamma, beta = bn.weight.detach(), bn.bias.detach()
    B, ch = len(y), W.shape[0]
    cols = F.unfold(x, 3, padding=1)  # (B, 9, 16)
    z = (W.view(ch, -1) @ cols + b[:, None]).view(B, ch, 4, 4)
    a = z.clamp(min=0)
    mu, var = a.mean((0, 2, 3), keepdim=True), a.var((0, 2, 3), unbiased=False, keepdim=True)
    ahat = (a - mu) / (var + bn.eps).sqrt()
    h = gamma.view(1, -1, 1, 1) * ahat + beta.view(1, -1, 1, 1)
    G = h.view(B, C, ch // C, 16).pow(2).mean((2, 3))
    dG = (G.softmax(1) - F.one_hot(y, C).double()) / B
    n_group = (ch // C) * 16
    dh = dG.repeat_interleave(ch // C, 1).view(B, ch, 1, 1) * 2 * h / n_group
    dahat = dh * gamma.view(1, -1, 1, 1)
    # batch-norm backward with batch statistics
    da = (dahat - dahat.mean((0, 2, 3), keepdim=True)
          - ahat * (dahat * ahat).mean((0, 2, 3), keepdim=True)) / (var + bn.eps).sqrt()
    dz = da * (z > 0)
    gW = torch.einsum("bcp,bkp->ck", dz.view(B, ch, 16), cols).view_as(W)
    gb = dz.sum((0, 2, 3))
    layer.zero_grad()
    cwc_loss(layer(x), y, C).backward()
    torch.testing.assert_close(conv.weight.grad, gW)
    torch.testing.assert_close(conv.bias.grad, gb)


@pytest.mark.locality("cwcomp")
def test_no_gradient_of_a_layer_loss_reaches_an_earlier_layer():
    algo, data = make(), tiny_data()
    x, y = data.x_train, data.y_train
    algo.net.train()
    outs, h = [], x
    for layer in algo.net:  # the training forward: each layer on its detached input
        h = layer(h.detach())
        outs.append(h)
    params = [list(layer.parameters()) for layer in algo.net]
    for i, out in enumerate(outs):
        grads = torch.autograd.grad(cwc_loss(out, y, C), [p for ps in params for p in ps], allow_unused=True)
        at = 0
        for j, ps in enumerate(params):
            for g in grads[at:at + len(ps)]:
                if j == i:
                    assert g is not None
                else:
                    assert g is None, f"layer {i + 1}'s loss reached layer {j + 1}"
            at += len(ps)


def test_prediction_is_the_last_layers_goodness():
    algo, data = make(), tiny_data()
    algo.net.eval()
    h = data.x_val
    for layer in algo.net:
        h = layer(h)
    torch.testing.assert_close(algo.predict(data.x_val), class_goodness(h, C))
    v = algo.validate(algo.stages()[0], data)
    assert 0 <= v["acc"] <= 100 and v["loss"] > 0


def test_ilt_schedule_trains_layers_for_their_epochs_only():
    """ilt_first 2, ilt_step 1: layer l trains during epochs [0, 1 + l); stages ilt1 (2 epochs,
    every layer), ilt2 (1 epoch, layers 2-3), ilt3 (1 epoch, layer 3); earlier layers frozen."""
    algo, data = make(schedule="ilt", ilt_first=2, ilt_step=1), tiny_data()
    stages = algo.stages()
    assert [(s.name, s.epochs) for s in stages] == [("ilt1", 2), ("ilt2", 1), ("ilt3", 1)]
    gen = generator(torch.device("cpu"), 0)
    for s in stages:
        algo.begin_stage(s, data, s.epochs)
        before = [layer.state_dict() for layer in algo.net]
        before = [{k: v.clone() for k, v in d.items()} for d in before]
        algo.train_epoch(s, data, gen)
        k = int(s.name[3:]) - 1
        for j, layer in enumerate(algo.net):
            same = all(torch.equal(v, before[j][n]) for n, v in layer.state_dict().items())
            assert same == (j < k), (s.name, j)  # frozen layers: weights and BN statistics unchanged
    m = models.cwc_layer_macs(ARCH, (1, 4, 4))
    assert algo.cost(stages[1]).train == m[0] + 2 * (m[1] + m[2])


ILT = {"schedule": "ilt", "ilt_first": 1, "ilt_step": 1}


def snapshot(layer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("bn", ["frozen", "moving"])
def test_bn_after_stop_decides_what_a_stopped_layer_does(bn):
    """Stage ilt2 (layer 1 stopped): its weights never change; under frozen (the default) nor do
    its BatchNorm statistics, and layer 2 sees layer 1 normalised by them; under moving (the
    code's) they follow the batch, and layer 2 sees layer 1 normalised by the batch's statistics."""
    algo, data = make(**ILT, bn_after_stop=bn), tiny_data()
    s1, s2 = algo.stages()[:2]
    gen = generator(torch.device("cpu"), 0)
    algo.begin_stage(s1, data, 1)
    algo.train_epoch(s1, data, gen)
    algo.begin_stage(s2, data, 1)
    before, copies = snapshot(algo.net[0]), (copy.deepcopy(algo.net[0]).train(), copy.deepcopy(algo.net[0]).eval())
    inputs = []  # what layers 1 and 2 receive (one batch is the whole epoch)
    hooks = [algo.net[i].register_forward_pre_hook(lambda m, args: inputs.append(args[0].clone())) for i in (0, 1)]
    algo.train_epoch(s2, data, gen)
    for h in hooks:
        h.remove()
    after = snapshot(algo.net[0])
    with torch.no_grad():  # layer 1 on that batch with the batch's statistics, or its running ones
        batch_stats, running = (c(inputs[0]) for c in copies)
    bn_keys = {k for k in before if "running" in k or "num_batches" in k}
    for k in before.keys() - bn_keys:
        assert torch.equal(after[k], before[k]), k  # stopped: no weight moves
    moved = {k for k in bn_keys if not torch.equal(after[k], before[k])}
    assert moved == (bn_keys if bn == "moving" else set())
    # layer 2 received layer 1's output normalised by the batch's statistics, or by the running ones
    assert not torch.allclose(batch_stats, running)
    torch.testing.assert_close(inputs[1], batch_stats if bn == "moving" else running)


def test_ilt_epochs_add_a_tail_that_moves_only_batchnorm_statistics():
    algo, data = make(**ILT, bn_after_stop="moving", ilt_epochs=5), tiny_data()
    stages = algo.stages()
    assert [(s.name, s.epochs) for s in stages] == [("ilt1", 1), ("ilt2", 1), ("ilt3", 1), ("ilt-tail", 2)]
    tail, gen = stages[-1], generator(torch.device("cpu"), 0)
    algo.begin_stage(tail, data, 2)
    before = [snapshot(layer) for layer in algo.net]
    loss = algo.train_epoch(tail, data, gen)
    assert float(loss) == 0.0  # no layer trains
    for b, layer in zip(before, algo.net):
        for k, v in layer.state_dict().items():
            assert torch.equal(v, b[k]) != ("running" in k or "num_batches" in k), k
    assert algo.cost(tail).train == sum(models.cwc_layer_macs(ARCH, (1, 4, 4)))


def test_report_test_each_epoch_records_the_test_accuracy_and_changes_nothing_else():
    data = tiny_data()
    y = data.y_test.clone()
    data = Data(data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, y.roll(1), META)  # test != val
    runs = {}
    for on in (False, True):
        algo = make(**ILT, bn_after_stop="moving", ilt_epochs=4, report_test_each_epoch=on)
        res = fit(algo, data, Stopping(max_epochs=4, patience=4), seed=0)
        runs[on] = (algo, res.history)
    (off, h_off), (on, h_on) = runs[False], runs[True]
    assert all("test_acc" not in r for r in h_off) and all("test_acc" in r for r in h_on)
    drop = ("seconds", "cpu_s", "load_1m", "test_acc")
    assert [{k: v for k, v in r.items() if k not in drop} for r in h_on] == \
           [{k: v for k, v in r.items() if k not in drop} for r in h_off]
    assert all(torch.equal(v, off.net.state_dict()[k]) for k, v in on.net.state_dict().items())
    assert h_on[-1]["test_acc"] == accuracy(on.predict(data.x_test), data.y_test)  # the last epoch is kept


def test_settings_rules():
    with pytest.raises(ConfigError, match="ilt_first"):
        make(schedule="ilt")
    with pytest.raises(ConfigError, match="does not use ilt_step"):
        make(ilt_step=1)
    with pytest.raises(ValueError, match="divisible"):
        CwComp({"type": "cwc-cnn", "channels": [4, 6]}, META, HP, "cpu")
    with pytest.raises(ConfigError, match="bn_after_stop = 'moving': schedule simultaneous stops no layer"):
        make(bn_after_stop="moving")
    with pytest.raises(ConfigError, match="ilt_epochs = 20: .* unless bn_after_stop is moving"):
        make(**ILT, ilt_epochs=20)
    with pytest.raises(ValueError, match="ilt_epochs = 2 ends before layer 3 stops"):
        make(**ILT, bn_after_stop="moving", ilt_epochs=2)
    assert make().hp.bn_after_stop == "frozen" and not make().hp.report_test_each_epoch


def test_cwc_cnn_architecture_paper_network():
    """The paper's MNIST network: [20, 80, 240, 480], pooling on layers 2 and 4, CFSE groups of 10
    on the pooling layers; bp builds the same layers plus a linear head."""
    arch = {"type": "cwc-cnn", "channels": [20, 80, 240, 480], "groups": [1, 10, 1, 10]}
    assert models.cwc_shapes(arch, (1, 28, 28)) == [(1, 28, 28), (20, 28, 28), (80, 14, 14), (240, 14, 14),
                                                    (480, 7, 7)]
    macs = models.cwc_layer_macs(arch, (1, 28, 28))
    assert macs == [9 * 1 * 20 * 784, 9 * 2 * 80 * 784, 9 * 80 * 240 * 196, 9 * 24 * 480 * 196]
    net = models.build(arch, (1, 28, 28), 10)
    assert net.layers[1][0].groups == 10 and isinstance(net.layers[1][2], torch.nn.MaxPool2d)
    assert len(net.layers[0]) == 3 and net.layers[0][2].eps == 1e-4  # conv, relu, bn: no pool
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert models.build_macs(arch, (1, 28, 28), 10) == sum(macs) + 480 * 49 * 10
    assert models.first_layer_macs(arch, (1, 28, 28)) == macs[0]
    with pytest.raises(ValueError, match="groups"):
        models.cwc_layout({"type": "cwc-cnn", "channels": [20, 25], "groups": [1, 10]})
    with pytest.raises(ValueError, match="entries"):
        models.cwc_layout({"type": "cwc-cnn", "channels": [20, 20], "pool": [True]})


def test_bp_trains_the_cwc_network_end_to_end(digits):
    torch.manual_seed(0)
    arch = {"type": "cwc-cnn", "channels": [10, 20, 40]}
    algo = BP(arch, digits.meta, {"lr": 3e-3, "weight_decay": 0.0, "batch_size": 64}, "cpu")
    fit(algo, digits, Stopping(max_epochs=3, patience=3), seed=0)
    assert accuracy(algo.predict(digits.x_test), digits.y_test) > 80.0
    fwd = algo.predict_macs()
    assert algo.cost(Stage("all")).train == 3 * fwd - models.cwc_layer_macs(arch, (1, 8, 8))[0]


def test_cwcomp_learns_digits(digits):
    torch.manual_seed(0)
    algo = CwComp({"type": "cwc-cnn", "channels": [20, 40, 80]}, digits.meta, {"lr": 1e-2, "batch_size": 64}, "cpu")
    res = fit(algo, digits, Stopping(max_epochs=10, patience=4), seed=0)
    acc = accuracy(algo.predict(digits.x_test), digits.y_test)
    assert acc > 90.0, f"test accuracy {acc:.1f}% (history {res.history[-3:]})"


def test_cwcomp_authors_protocol_learns_digits(digits):
    """The code's protocol as far as settings go: ILT, BatchNorm statistics moving after a layer
    stops, epochs after the last layer stops, the test accuracy of every epoch recorded."""
    torch.manual_seed(0)
    hp = {"lr": 1e-2, "batch_size": 64, "schedule": "ilt", "ilt_first": 2, "ilt_step": 1,
          "bn_after_stop": "moving", "ilt_epochs": 8, "report_test_each_epoch": True}
    algo = CwComp({"type": "cwc-cnn", "channels": [20, 40, 80]}, digits.meta, hp, "cpu")
    res = fit(algo, digits, Stopping(max_epochs=10, patience=4), seed=0)
    acc = accuracy(algo.predict(digits.x_test), digits.y_test)
    assert acc > 90.0, f"test accuracy {acc:.1f}% (history {res.history[-3:]})"
    assert [r["stage"] for r in res.history] == ["ilt1"] * 2 + ["ilt2", "ilt3"] + ["ilt-tail"] * 4
    assert res.history[-1]["test_acc"] == acc


def test_config_names_the_paper_network_and_checks_it():
    import yaml

    from bpfree import config
    from conftest import ROOT

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["architectures"]["cwc-small"] = {"type": "cwc-cnn", "channels": [20, 40, 80], "groups": [1, 10, 1]}
    cfg["algorithms"]["cwcomp"] = {"impl": "cwcomp", "fixed": {"batch_size": 64},
                                   "space": {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}}
    cfg["comparisons"].append({"architecture": "cwc-small", "algorithms": ["bp", "cwcomp"]})
    config.validate(cfg)
    bad = {**cfg, "architectures": {**cfg["architectures"], "cwc-small": {"type": "cwc-cnn", "channels": [20, 45],
                                                                           "groups": [1, 10]}}}
    with pytest.raises(ConfigError, match=r"architectures\.cwc-small: layer 2: groups = 10"):
        config.validate(bad)
    bad["architectures"]["cwc-small"] = {"type": "cnn", "channels": [20, 40], "pool": [True, True]}
    with pytest.raises(ConfigError, match="cwc-cnn key"):
        config.validate(bad)
    cfg["comparisons"].append({"architecture": "mlp-2x256", "algorithms": ["cwcomp"]})
    with pytest.raises(ConfigError, match="cwcomp runs on cwc-cnn"):
        config.validate(cfg)
