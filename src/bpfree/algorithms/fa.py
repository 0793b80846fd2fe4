"""FA: feedback alignment (Lillicrap, Cownden, Tweed, Akerman 2016, "Random synaptic feedback
weights support error backpropagation for deep learning", Nature Communications 7:13276; arXiv
1411.0247), on the same MLP and 3-block CNN as bp.

The backward pass of backpropagation with every transposed forward weight replaced by a fixed
random matrix of the same shape (the paper's Fig. 1: delta_h = B e instead of W^T e):

    delta_{L+1} = e = softmax(logits) - onehot(y)      (divided by the batch: the mean CE's error)
    delta_l     = (B_{l+1}^T delta_{l+1}) * f'(z_l)     B_{l+1} has the shape of W_{l+1}
    dW_l        = delta_l a_{l-1}^T,  db_l = delta_l    (summed over the batch), as in backprop.

A convolution sends its output gradient to its input through the transposed convolution with a
fixed random kernel B of the weight's shape (C_out, C_in, k, k), its weight gradient is backprop's
(the correlation of its input with the output gradient). ReLU, max-pooling and BatchNorm carry the
gradient as in backprop (as BioTorch, `jsalbert/biotorch` mode `fa`, which replaces only the
linear and convolution weights); BatchNorm's scale, a per-channel weight, is thus transported.

Implementation: each layer but the first is a custom autograd Function whose backward uses B for
the input gradient (`FALinear`, `FAConv2d`): no gradient ever passes through a W^T. The first
layer's input gradient is never needed, so it has no B (a plain linear or convolution; its weight
gradient is the same formula). B_{l} is the buffer `feedback{l}` of the network (l = 1..L, the
head's is `feedback{L}`), drawn once after the weights, never trained, in the state_dict so the
engine's checkpoints and a resumed run keep it.

B's distribution: the initialiser of the weight it stands for (spec; BioTorch draws W and B alike
too): Kaiming-uniform with ReLU gain for hidden linear and conv layers (`models.hidden_linear`,
`models.conv_block`), torch's Linear default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the head. The
paper's MNIST network drew its weights and B from small uniform ranges with sigmoid units and SGD;
under Adam(W) a constant factor on B_{l+1} scales the gradients of layers 1..l only, which the
per-weight normalisation removes, so B's scale is no setting here.

Departures from the paper: ReLU (as bp's network) instead of sigmoid/tanh, AdamW (as bp) instead
of plain SGD, cross-entropy instead of squared error.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bpfree.algorithms.base import Stage, minibatch_epoch, train_batch
from bpfree.algorithms.bp import BP
from bpfree.data import Data


class FALinear(torch.autograd.Function):
    """y = a W^T + b; backward: da = delta B (B fixed, shape of W), dW = delta^T a, db = sum delta."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                feedback: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, feedback)
        ctx.has_bias = bias is not None
        return F.linear(a, weight, bias)

    @staticmethod
    def backward(ctx, delta: torch.Tensor):
        a, feedback = ctx.saved_tensors
        da = delta @ feedback if ctx.needs_input_grad[0] else None
        db = delta.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return da, delta.T @ a, db, None


class FAConv2d(torch.autograd.Function):
    """y = conv2d(a, W) (no bias); backward: da = conv2d_input(B, delta) with the fixed kernel B of
    W's shape, dW = conv2d_weight(a, delta) as in backprop."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, weight: torch.Tensor, feedback: torch.Tensor, stride, padding) -> torch.Tensor:
        ctx.save_for_backward(a, feedback)
        ctx.conv = dict(stride=stride, padding=padding)
        return F.conv2d(a, weight, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, delta: torch.Tensor):
        a, feedback = ctx.saved_tensors
        da = (torch.nn.grad.conv2d_input(a.shape, feedback, delta, **ctx.conv)
              if ctx.needs_input_grad[0] else None)
        dw = torch.nn.grad.conv2d_weight(a, feedback.shape, delta, **ctx.conv)
        return da, dw, None, None, None


def feedback_like(weight: torch.Tensor, head: bool) -> torch.Tensor:
    """A fresh draw (on the CPU, whatever the device) from the initialiser of `weight`: torch's
    Linear default for the head (bound 1/sqrt(fan_in)), Kaiming-uniform with ReLU gain (bound
    sqrt(6/fan_in)) for the rest."""
    b = torch.empty(weight.shape)
    if head:
        return nn.init.kaiming_uniform_(b, a=math.sqrt(5))
    return nn.init.kaiming_uniform_(b, nonlinearity="relu")


class RandomFeedback(BP):
    """bp's network, settings (`bp.Settings`: lr, weight_decay, batch_size) and AdamW, plus fixed
    random feedback buffers `feedback{l}` on the network (registered by the subclass)."""

    LOCALITY = "feedback-alignment"
    ARCH_OPTIONS = ()  # the feedback passes are written for the plain layers (no BatchNorm, dropout)

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)  # bp's network (drawn first, the same as bp's) and its AdamW
        self.mlp = arch["type"] == "mlp"

    @property
    def layers(self) -> nn.ModuleList:
        """The hidden layers (Linear) or conv blocks, in order (a view of self.net, not its own state)."""
        return self.net.hidden if self.mlp else self.net.blocks

    def feedback(self, l: int) -> torch.Tensor:
        """The fixed feedback matrix (or kernel) of layer l."""
        return getattr(self.net, f"feedback{l}")


class FA(RandomFeedback):
    """The backward pass through the fixed B instead of W^T. `feedback(l)`, l >= 1 (0-based over
    the hidden layers, then the head), has the shape of layer l's weight."""

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        weights = [layer.weight if self.mlp else layer[0].weight for layer in self.layers] + [self.net.head.weight]
        for l in range(1, len(weights)):  # B_1 would carry the input gradient, never needed
            self.net.register_buffer(f"feedback{l}", feedback_like(weights[l], head=l == len(weights) - 1))
        self.net.to(self.device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits, with the FA backward attached to every layer but the first."""
        a = x.flatten(1) if self.mlp else x
        for l, layer in enumerate(self.layers):
            if self.mlp:
                z = layer(a) if l == 0 else FALinear.apply(a, layer.weight, layer.bias, self.feedback(l))
                a = torch.relu(z)
            else:
                conv, relu, pool, bn = layer
                z = conv(a) if l == 0 else FAConv2d.apply(a, conv.weight, self.feedback(l), conv.stride, conv.padding)
                a = bn(pool(relu(z)))
        head = self.net.head
        return FALinear.apply(a.flatten(1), head.weight, head.bias, self.feedback(len(self.layers)))

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        self.net.train()
        return minibatch_epoch(
            self.opt, lambda idx: F.cross_entropy(self.logits(train_batch(data, idx, gen)), data.y_train[idx]),
            len(data.y_train), self.hp.batch_size, gen, self.device)

    # stages, predict, validate, cost (bp's: forward + weight gradients + input gradients, here
    # through B, of every layer but the first) and predict_macs: bp's


ALGORITHM = FA
