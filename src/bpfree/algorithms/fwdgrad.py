"""fwdgrad: forward gradients, no backward pass (field-algorithms.md, "fwdgrad"). Two variants:

`variant = "weight"`: weight perturbation (Baydin, Pearlmutter, Syme, Wood, Torr 2022, "Gradients
without Backpropagation", arXiv 2202.08587, Algorithm 1). On the project's MLP (`models.MLP`, the
network bp trains) with the batch's mean cross-entropy L(theta): draw v ~ N(0, I) over every
parameter, get L and the directional derivative d = grad L . v in one forward pass
(`torch.func.jvp`), and use g = d v, averaged over `n_perturbations` independent draws per step.
E[g] = grad L; its variance grows with the number of parameters.

`variant = "local"`: activity perturbation with local losses (Ren, Kornblith, Liao, Hinton 2023,
"Scaling Forward Gradient With Local Losses", ICLR, arXiv 2210.03310; the authors' code,
google-research/local_forward_gradient, `update_forward_grad_activations`). Every hidden layer l
has its own linear head M_l (C, d_l) and local loss L_l = mean_n CE(M_l relu(z_{l,n}), y_n), with
z_l = W_l a_{l-1} + b_l on the detached input a_{l-1} (the paper's simplest local-greedy setting:
one block per layer, one loss per block). Per example n a perturbation u_n ~ N(0, I_{d_l}) of the
pre-activation gives, by forward-mode differentiation, d_n = dL_l/dz_{l,n} . u_n, and the activity's
forward gradient g_{z,n} = d_n u_n * relu'(z_{l,n}); the weights get the layer's exact local Jacobian:
g_W = sum_n g_{z,n} a_{l-1,n}^T, g_b = sum_n g_{z,n}, averaged over `n_perturbations` draws. The
tangent is carried forward by hand through the head's two operations (`directional_derivatives`: the
product with M_l, then the cross-entropy), all K perturbations sharing one primal pass: the numbers
`torch.func.jvp` gives on the K repeated examples (tested), without its K copies of the primal. The
ReLU mask is the authors' (their code multiplies by it): the true gradient is zero where the unit is
off, so the estimate stays unbiased and loses those components' noise. As in the authors' code the
heads get their true gradient, here in closed form ((softmax - onehot)^T relu(z_l) / B), not by
backward(). Prediction: argmax of the last layer's head.

Departures from the papers: an MLP of Linear -> ReLU layers, no LayerNorm, no patch or group
replication of the losses (Ren et al.'s LocalMixer); the network and heads are those of `mf`
(`MonoForwardNet`, no head bias), so the two differ only in the gradient estimator. The learning
rate is constant or cosine-decayed over the stage's epoch budget (`schedule`; Ren et al. warm up,
then decay by cosine; Baydin et al. decay exponentially).

No `backward()` anywhere in a training step: parameters never require a gradient here; the
estimates are written into `.grad` and a fused torch optimiser steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from bpfree import hparams, models
from bpfree.hparams import hp
from bpfree.algorithms.base import (SGD, Algorithm, Cost, Stage, accuracy, adam, chunked, minibatch_epoch,
                                    train_batch)
from bpfree.algorithms.mf import MonoForwardNet
from bpfree.data import Data


@dataclass(frozen=True, kw_only=True)
class Settings(hparams.Settings):
    variant: str = hp(choices=("weight", "local"),
                      doc="weight: perturb all weights, one global loss (Baydin et al.); local: perturb each "
                          "layer's pre-activations, one local loss per layer (Ren et al.)")
    n_perturbations: int = hp(1, low=1, doc="independent perturbations averaged per step (papers: 1)")
    lr: float = hparams.lr()
    batch_size: int = hparams.batch_size()
    optimizer: str = hp("sgd", choices=("sgd", "adamw"), doc="SGD with momentum (l2) or AdamW (weight_decay)")
    momentum: float = hp(0.9, low=0.0, high=1.0, high_open=True, doc="SGD momentum (optimizer sgd)")
    l2: float = hparams.l2("L2 penalty (optimizer sgd)")
    weight_decay: float = hparams.weight_decay("decoupled weight decay (optimizer adamw)")
    schedule: str = hp("constant", choices=("constant", "cosine"),
                       doc="learning rate constant, or cosine-decayed to 0 over the stage's epoch budget")

    def check(self) -> None:
        hparams.check_decay(self, self.optimizer, self.optimizer == "adamw")

    def optimizer_label(self) -> str:
        opt = (f"SGD, momentum {self.momentum:g} (L2 penalty)" if self.optimizer == "sgd"
               else "AdamW (decoupled weight decay)")
        return opt + (", cosine schedule" if self.schedule == "cosine" else "")


def cosine(e: int, E: int) -> float:
    """Rate factor at 0-based epoch e of E: 1 at the first epoch, falling to (1 + cos(pi (E-1)/E)) / 2."""
    return 0.5 * (1 + math.cos(math.pi * e / E))


def directional_derivatives(u: torch.Tensor, on: torch.Tensor, head: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """Forward-mode derivatives of a layer's local loss L = mean_n CE(M relu(z_n), y_n) along K
    perturbations of its pre-activations: d_kn = dL/dz_n . u_kn, propagated forward (tangent of the
    scores t_kn = M (relu'(z_n) * u_kn), then the cross-entropy's tangent err_n . t_kn), which is what
    `torch.func.jvp` computes, without its K copies of the primal pass (tested against it).
    u: (K, B, d) perturbations; on: (B, d) relu'(z); head: M, (C, d); err: (B, C) = (softmax(s) -
    onehot(y)) / B, the cross-entropy's derivative in the scores. Returns d: (K, B)."""
    t = (u * on).view(-1, u.shape[2]) @ head.T  # (K B, C)
    return (t.view(u.shape[0], u.shape[1], -1) * err).sum(2)


class ForwardGradient(Algorithm):
    Settings = Settings
    LOCALITY = "perturbation"
    ARCHITECTURES = ("mlp",)

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        self.widths = models.mlp_widths(arch, self.shape)
        self.L = len(self.widths) - 1
        if self.hp.variant == "weight":
            self.net = models.MLP(self.widths, self.n_classes).to(self.device)
        else:
            self.net = MonoForwardNet(self.widths, self.n_classes).to(self.device)
        self.net.requires_grad_(False)  # estimates are written into .grad; no autograd graph
        h = self.hp
        if h.optimizer == "sgd":
            self.opt = SGD(self.net.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.l2,
                            fused=True)
        else:
            self.opt = adam(self.net.parameters(), h.lr, weight_decay=h.weight_decay)

    def begin_stage(self, stage: Stage, data: Data, max_epochs: int) -> None:
        # a scheduler, not a counter: saved with crash checkpoints
        factor = (lambda e: cosine(e, max_epochs)) if self.hp.schedule == "cosine" else (lambda e: 1.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)

    # ---- the two estimators ----------------------------------------------------------------------

    @torch.no_grad()
    def weight_step(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Set every parameter's .grad to the weight-perturbed forward gradient of the batch's mean
        cross-entropy (x: (B, ...) images, y: (B,) labels), averaged over n_perturbations; return
        the loss."""
        params = dict(self.net.named_parameters())
        K = self.hp.n_perturbations

        def loss(p: dict) -> torch.Tensor:
            return F.cross_entropy(functional_call(self.net, p, (x,)), y)

        def directional(v: dict) -> tuple[torch.Tensor, torch.Tensor]:
            return jvp(loss, (params,), (v,))

        grads = {k: torch.zeros_like(p) for k, p in params.items()}
        done = 0
        while done < K:  # the draws in chunks, each chunk in one vmapped pass
            n = min(K - done, self.chunk())
            v = {k: torch.randn((n, *p.shape), generator=gen, device=p.device) for k, p in params.items()}
            value, d = torch.func.vmap(directional)(v)  # d: (n,) directional derivatives grad L . v
            for k in grads:
                grads[k] += torch.tensordot(d, v[k], dims=1) / K
            done += n
        for k, p in params.items():
            p.grad = grads[k]
        return value[0]

    def chunk(self) -> int:
        """Perturbations per vmapped pass of the weight variant: at most 2^24 numbers drawn at once."""
        return max(1, 2 ** 24 // self.n_params())

    @torch.no_grad()
    def local_step(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Set .grad of every hidden layer to its activity-perturbed forward gradient of its own
        local loss, and of every head to its exact gradient; return the sum of the local losses."""
        K, B = self.hp.n_perturbations, len(y)
        target = F.one_hot(y, self.n_classes).to(x.dtype)
        a, total = x.flatten(1), torch.zeros((), device=x.device)
        for i, layer in enumerate(self.net.hidden):
            z = layer(a)  # a is the layer's input, a constant here: nothing reaches the layer below
            on = (z > 0).to(z.dtype)
            h = z * on
            s = self.net.scores(i, h)
            err = (s.softmax(1) - target) / B  # (B, C): dL/ds, the one primal the K tangents share
            u = torch.randn(K, B, z.shape[1], generator=gen, device=z.device)
            d = directional_derivatives(u, on, self.net.proj[i], err)
            # g_z,n = mean_k d_kn u_kn, masked: (B, 1, K) @ (B, K, d_l) without a (K, B, d_l) temporary
            g_z = torch.bmm(d.T.unsqueeze(1), u.transpose(0, 1)).squeeze(1).mul_(on / K)
            layer.weight.grad = g_z.T @ a
            layer.bias.grad = g_z.sum(0)
            self.net.proj[i].grad = err.T @ h
            total += F.cross_entropy(s, y)
            a = h
        return total

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        step = self.weight_step if self.hp.variant == "weight" else self.local_step
        mean = minibatch_epoch(self.opt, lambda idx: step(train_batch(data, idx, gen), data.y_train[idx], gen),
                               len(data.y_train), self.hp.batch_size, gen, self.device)
        self.sched.step()
        return mean

    # ---- inference -------------------------------------------------------------------------------

    def _last_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.scores(self.L - 1, self.net.activations(x)[-1])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return chunked(self.net if self.hp.variant == "weight" else self._last_scores, x)

    def layer_accuracies(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.hp.variant == "weight":
            return {}
        acts = [chunked(lambda c, i=i: self.net.scores(i, self.net.activations(c)[i]), x) for i in range(self.L)]
        return {f"layer{i + 1}": accuracy(s, y) for i, s in enumerate(acts)}

    # ---- analytic cost ---------------------------------------------------------------------------

    def cost(self, stage: Stage) -> Cost:
        w, C, K = self.widths, self.n_classes, self.hp.n_perturbations
        layers = [w[i] * w[i + 1] for i in range(self.L)]
        if self.hp.variant == "weight":
            fwd = self.predict_macs()
            # per vmapped chunk one primal pass, plus the layer-1 product of the input's zero tangent
            # that torch's forward-mode rule of a linear layer still computes (work the rule does not
            # need, counted because it is done); per perturbation the tangent's dW a terms (one pass)
            # and its W da terms (none at layer 1); then d v summed into the estimate, per step
            chunks = -(-K // self.chunk())
            per_step = K * self.n_params()
            return Cost(train=chunks * (fwd + layers[0]) + K * (2 * fwd - layers[0]) + per_step // self.hp.batch_size,
                        eval=fwd)
        heads = sum(d * C for d in w[1:])
        # layer forwards and weight gradients; per head: one primal, K tangents, the exact gradient;
        # per unit the K-term average of d u
        return Cost(train=2 * sum(layers) + (K + 2) * heads + K * sum(w[1:]), eval=self.predict_macs())

    def predict_macs(self) -> int:
        if self.hp.variant == "weight":
            return models.mlp_macs(self.widths, self.n_classes)
        return sum(self.widths[i] * self.widths[i + 1] for i in range(self.L)) + self.widths[-1] * self.n_classes


ALGORITHM = ForwardGradient
