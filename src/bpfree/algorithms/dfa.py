"""DFA: direct feedback alignment (Nøkland 2016, "Direct Feedback Alignment Provides Learning in
Deep Neural Networks", NeurIPS; arXiv 1609.01596), on the same MLP and 3-block CNN as bp.

One forward pass, then every hidden layer l learns from the output error alone, sent to it through
a fixed random matrix (the paper's DFA update; its Fig. 1 draws BP, FA and DFA side by side):

    e        = softmax(logits) - onehot(y)          (divided by the batch: the error of the mean CE)
    delta_l  = (B_l e) * f'(z_l)                    for every hidden layer l = 1..L
    dW_l     = delta_l a_{l-1}^T,  db_l = delta_l   (summed over the batch)
    output layer: its true gradient e a_L^T.

B_l is stored as a (C, d_l) buffer `feedback{l-1}` of the network (so the gradient at a_l is
e @ B_l), drawn once after the network's weights and never trained; it lives in the state_dict, so
the engine's checkpoints and a resumed run keep it. Each layer sees its input detached: autograd
computes only the layer-internal part (the f'(z_l) factor and the weight gradient), never a
gradient from one layer to another.

The CNN: B_l maps e to the block's whole output feature map (after ReLU, max-pool and BatchNorm),
d_l = C_l H_l W_l, and the block's own backward (BatchNorm, pooling, ReLU, conv weight) turns it
into the parameter gradients. That is Nøkland's own code (`anokland/dfa-torch`: its ErrorFeedback
module sits after each pooling layer and projects e onto the flattened map), and what the DFA phase
of cafo-dfa does; BioTorch's variant (e tiled over the map and sent through a fixed (C, C_in, k, k)
kernel) is not followed. cafo's DFA phase calls `dfa_backward` below: one implementation.

B_l's distribution (`feedback_init`):
- "uniform": U(-1/sqrt(d_l), 1/sqrt(d_l)), the default of the author's code (`rfb_mag 0`);
- "unit-rows": Gaussian with rows of unit L2 norm, the draw of cafo-dfa (CaFo's code).
Under Adam(W) a constant factor on B_l scales layer l's gradient only, which the per-weight
normalisation removes, so B's scale is no setting here.

Departures from the paper: ReLU (as bp's network) instead of the paper's tanh with zero initial
weights; the weights start from the bp network's Kaiming-uniform init; AdamW (as bp) instead of
RMSprop; no dropout; cross-entropy (the code's default criterion is binary cross-entropy on sigmoid
outputs).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bpfree import models
from bpfree.algorithms import bp
from bpfree.algorithms.base import Cost, Stage, minibatch_epoch, train_batch
from bpfree.algorithms.fa import RandomFeedback
from bpfree.data import Data
from bpfree.hparams import hp

FEEDBACK_INITS = ("uniform", "unit-rows")


# ---- the mechanics, shared with cafo's DFA phase -----------------------------------------------------

def feedback_matrix(n_classes: int, d: int, init: str) -> torch.Tensor:
    """A fixed random feedback matrix B of shape (C, d) (see FEEDBACK_INITS in the module doc)."""
    if init == "uniform":
        return torch.empty(n_classes, d).uniform_(-d ** -0.5, d ** -0.5)
    if init == "unit-rows":
        b = torch.randn(n_classes, d)
        return b / b.norm(dim=1, keepdim=True)
    raise ValueError(f"feedback_init {init!r}: not one of {', '.join(FEEDBACK_INITS)}")


def register_feedback(module: nn.Module, n_classes: int, sizes: Sequence[int], init: str) -> None:
    """Buffers `feedback0`, `feedback1`, ... of shape (C, sizes[k]) on `module`, drawn in order."""
    for k, d in enumerate(sizes):
        module.register_buffer(f"feedback{k}", feedback_matrix(n_classes, d, init))


def output_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """e = (softmax(logits) - onehot(y)) / N: the gradient of the mean cross-entropy at the logits."""
    return (logits.softmax(1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)) / len(y)


def dfa_backward(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, outs: Sequence[torch.Tensor],
                 feedback: Sequence[torch.Tensor]) -> torch.Tensor:
    """Set the DFA gradients of one batch; returns the loss, detached.

    loss:     the mean cross-entropy of `logits` (N, C) against y; it is backpropagated as usual, so
              it trains the output layer and whatever the logits reach without a detach.
    outs:     outputs a_l of the layers trained by DFA, each computed from a detached input.
    feedback: their matrices B_l, (C, a_l[0].numel()) each; a_l receives the gradient e @ B_l.
    """
    with torch.no_grad():
        e = output_error(logits, y)
        grads = [(e @ b).view_as(a) for a, b in zip(outs, feedback, strict=True)]
    torch.autograd.backward([loss, *outs], [None, *grads])
    return loss.detach()


# ---- the algorithm ---------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Settings(bp.Settings):
    feedback_init: str = hp("uniform", choices=FEEDBACK_INITS,
                            doc="distribution of the fixed feedback matrices B_l: uniform in +-1/sqrt(d_l) "
                                "(Nøkland's code) or Gaussian with unit-norm rows (cafo-dfa)")


class DFA(RandomFeedback):
    """Each hidden layer learns from e B_l, the output layer from e. `feedback(l)`: B of hidden
    layer l (0-based), (C, d_l)."""

    Settings = Settings

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        self.sizes = arch["widths"] if self.mlp else models.cnn_flat(arch["channels"], self.shape)
        register_feedback(self.net, self.n_classes, self.sizes, self.hp.feedback_init)
        self.net.to(self.device)

    def layer(self, l: int, a: torch.Tensor) -> torch.Tensor:
        """Hidden layer l (0-based) on its input a: ReLU(W a + b), or the conv block."""
        return torch.relu(self.layers[l](a)) if self.mlp else self.layers[l](a)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward one batch, set every parameter's DFA gradient; returns the mean CE loss."""
        a, outs = x.flatten(1) if self.mlp else x, []
        for l in range(len(self.layers)):
            a = self.layer(l, a.detach())
            outs.append(a)
        logits = self.net.head(a.detach().flatten(1))
        loss = F.cross_entropy(logits, y)
        return dfa_backward(loss, logits, y, outs, [self.feedback(l) for l in range(len(outs))])

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        self.net.train()
        return minibatch_epoch(self.opt, lambda idx: self.step(train_batch(data, idx, gen), data.y_train[idx]),
                               len(data.y_train), self.hp.batch_size, gen, self.device)

    def cost(self, stage: Stage) -> Cost:
        fwd = self.predict_macs()
        # forward + every weight gradient (no input gradient anywhere) + the projections e B_l
        return Cost(train=2 * fwd + self.n_classes * sum(self.sizes), eval=fwd)

    # stages, predict, validate and predict_macs: bp's


ALGORITHM = DFA
