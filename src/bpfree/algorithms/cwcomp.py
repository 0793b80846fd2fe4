"""CwComp: channel-wise competitive Forward-Forward (Papachristodoulou, Kyrkou, Timotheou,
Theocharides 2024, "Convolutional Channel-wise Competitive Learning for the Forward-Forward
Algorithm", AAAI; arXiv 2312.12668; code andreaspapac/CwComp).

Runs on a `cwc-cnn` architecture (`bpfree.models.cwc_layout`): 3x3 convolutions -> ReLU ->
max-pool on every second layer -> BatchNorm. Every layer's C_l output channels are split into C
contiguous groups of C_l / C, one per class. For a layer output h (B, C_l, H, W) the goodness of
class c is the mean squared activation of its group,

    G_c = mean_{k in group c, i, j} h[:, k, i, j]^2                      (B, C)

and the layer's loss is the cross-entropy over the C goodness values with the true label (the
paper's CwC loss; the code's default `CwC_CE`): no negative data. Every layer sees its input
detached, so its loss reaches only its own convolution and BatchNorm. Prediction: argmax over c of
the last layer's G_c (the code's "Avg" predictor).

Schedules (`schedule`):
- "simultaneous": every layer trains on every batch (the plain channel-wise loss; one stage,
  the protocol's stopping rule).
- "ilt": the paper's interleaved layer training ("Acc" strategy: every layer starts at epoch 0,
  layer l stops after end_l epochs; the code's MNIST ends are 2, 3, 4, 5). Here
  end_l = ilt_first + (l - 1) * ilt_step, run as L fixed-length stages: stage k trains layers
  k..L for end_k - end_{k-1} epochs; `ilt_epochs` adds a last stage ("ilt-tail") that trains no
  layer, up to that many epochs in all (the code's 20). The code's FMNIST and CIFAR ends are not
  evenly spaced (10, 15, 19, 23 ...): ilt_first/ilt_step approximate them.

A stopped layer's BatchNorm (`bn_after_stop`, schedule ilt). The code (andreaspapac/CwComp at
254960a) puts the whole model in training mode at the start of every epoch (src/main_train.py:68),
and a layer outside its epochs runs `ff_infer` (src/Models.py:94-101), the same conv -> ReLU ->
pool -> BatchNorm as its training forward without the optimiser step (src/Layer_cnn.py:163-173):
its BatchNorm normalises with the batch's statistics and keeps updating its running mean and
variance. With MNIST's ends 2-5 and 20 epochs (src/configure.py:44, src/Models.py:23), the last 15
epochs change nothing but those statistics (and the "Sf" classifier). "moving" does that: during
every later training epoch a stopped layer runs in training mode, without gradients. "frozen"
(the default, our rule) runs it in evaluation mode on the running statistics it had when it
stopped, as at test time. Not replicated under "moving": after each step the code predicts the
training batch still in training mode (src/main_train.py:77-85), which moves every layer's
running statistics a second time per batch.

The code also trains on all 60,000 MNIST training images (src/configure.py:99), evaluates the test
set after every epoch and keeps the weights of the lowest test error (src/main_train.py:90-136):
test-set model selection. Those are protocol matters, not settings: our runs train on the
50,000-image training split (10,000 held out for validation), keep the model the schedule ends
with (under "simultaneous", the best validation epoch), and evaluate the test set once.
`report_test_each_epoch` only records the test accuracy of every epoch (the `test_acc` column of
epochs.csv), so that the code's "best test epoch" can be read off for a one-off comparison;
nothing in training or stopping reads it.

Optimiser: the code gives every layer its own Adam, lr 0.01, no weight decay; Adam is
per-parameter, so one Adam over all layers with the same rate is the same update. Batch 128 and
20 epochs in the code. Not built: the grouped-convolution CFSE network is an architecture
(`groups` of a cwc-cnn entry), so that bp can train the same network; the code's softmax
classifier on the last layer (its "Sf" predictor) and its "Fast" staggered-start schedule.
Validation: "acc" of the Avg predictor; "loss" the sum over layers of the CwC losses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bpfree import hparams, models
from bpfree.hparams import SettingError, hp
from bpfree.algorithms.base import Algorithm, Cost, Stage, accuracy, adam, chunked, minibatch_epoch, train_batch
from bpfree.data import Data


TAIL = "ilt-tail"  # schedule ilt: the epochs after the last layer stops (ilt_epochs)


def class_goodness(h: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Goodness (B, C) of a layer output h (B, C_l, H, W): the mean squared activation of each
    class's contiguous group of C_l / C channels."""
    B, ch = h.shape[:2]
    return h.reshape(B, n_classes, ch // n_classes, -1).pow(2).mean((2, 3))


def cwc_loss(h: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The channel-wise competitive (CwC) loss of arXiv 2312.12668: mean over the batch of
    -log softmax(G)_y, G = class_goodness(h) (the code's default criterion `CwC_CE`)."""
    return F.cross_entropy(class_goodness(h, n_classes), y)


@dataclass(frozen=True, kw_only=True)
class Settings(hparams.Settings):
    lr: float = hparams.lr("Adam learning rate of every layer (paper 0.01)")
    batch_size: int = hparams.batch_size("training examples per step (paper 128)")
    l2: float = hparams.l2("L2 penalty of the Adam (paper 0)")
    schedule: str = hp("simultaneous", choices=("simultaneous", "ilt"),
                       doc="every layer on every batch, or the paper's interleaved layer training")
    ilt_first: int | None = hp(None, low=1, unit="epochs", doc="schedule ilt: epochs of layer 1 (paper MNIST 2)")
    ilt_step: int | None = hp(None, low=0, unit="epochs",
                              doc="schedule ilt: epochs each later layer trains beyond the previous (paper MNIST 1)")
    bn_after_stop: str = hp("frozen", choices=("frozen", "moving"),
                            doc="schedule ilt: a stopped layer runs later training epochs in evaluation mode on "
                                "its running statistics (frozen), or in training mode, BatchNorm on batch "
                                "statistics with its running statistics still updated (moving, the code's)")
    ilt_epochs: int | None = hp(None, low=1, unit="epochs",
                                doc="schedule ilt, bn_after_stop moving: epochs in all (the code's 20); those after "
                                    "the last layer stops train no layer and only move BatchNorm's running "
                                    "statistics; null: the run ends when the last layer stops")
    report_test_each_epoch: bool = hp(False, doc="record the test accuracy after every epoch (column test_acc of "
                                                 "epochs.csv, one pass over the test split per epoch) for a "
                                                 "comparison with the code's best test epoch; never read by "
                                                 "training, stopping or the search")

    def check(self) -> None:
        for name in ("ilt_first", "ilt_step"):
            given = getattr(self, name) is not None
            if self.schedule == "ilt" and not given:
                raise SettingError(name, f"schedule ilt needs {name}")
            if self.schedule != "ilt" and given:
                raise SettingError(name, f"schedule {self.schedule} does not use {name}")
        if self.schedule != "ilt" and self.bn_after_stop != "frozen":
            raise SettingError("bn_after_stop", f"schedule {self.schedule} stops no layer")
        if self.ilt_epochs is not None and self.bn_after_stop != "moving":
            raise SettingError("ilt_epochs", "epochs after the last layer stops change nothing unless "
                                             "bn_after_stop is moving")

    def optimizer_label(self) -> str:
        return "Adam (L2 penalty)"


class CwComp(Algorithm):
    Settings = Settings
    LOCALITY = "layer-local"
    ARCHITECTURES = ("cwc-cnn",)

    def __init__(self, arch: dict, meta: dict, hp, device: torch.device):
        super().__init__(arch, meta, hp, device)
        C = self.n_classes
        self.channels = list(arch["channels"])
        self.L = len(self.channels)
        for k, ch in enumerate(self.channels):
            if ch % C:
                raise ValueError(f"cwcomp: layer {k + 1} has {ch} channels, not divisible by the {C} classes")
        self.layer_macs = models.cwc_layer_macs(arch, self.shape)
        self.net = models.cwc_layers(arch, self.shape).to(self.device)  # (ModuleList of layers)
        self.opt = adam(self.net.parameters(), self.hp.lr, l2=self.hp.l2)
        if self.hp.ilt_epochs is not None and self.hp.ilt_epochs < self._ends()[-1]:
            raise ValueError(f"cwcomp: ilt_epochs = {self.hp.ilt_epochs} ends before layer {self.L} stops "
                             f"(after epoch {self._ends()[-1]})")

    def _ends(self) -> list[int]:
        """Schedule ilt: the epoch after which each layer stops."""
        return [self.hp.ilt_first + k * self.hp.ilt_step for k in range(self.L)]

    def stages(self) -> list[Stage]:
        if self.hp.schedule == "simultaneous":
            return [Stage("all", monitor="acc")]
        ends = self._ends()
        lengths = [b - a for a, b in zip([0, *ends], ends)]
        # a zero-length phase (ilt_step 0) trains nothing of its own: its layer stops with the previous one
        stages = [Stage(f"ilt{k + 1}", monitor="acc", epochs=n, index=k) for k, n in enumerate(lengths) if n > 0]
        tail = (self.hp.ilt_epochs or ends[-1]) - ends[-1]
        return stages + ([Stage(TAIL, monitor="acc", epochs=tail)] if tail else [])

    def _first_trained(self, stage: Stage) -> int:
        """Index of the first layer that trains in `stage` (earlier layers are stopped)."""
        if stage.name == TAIL:
            return self.L  # no layer trains
        return stage.index or 0  # "all": every layer trains

    def begin_stage(self, stage: Stage, data: Data, max_epochs: int) -> None:
        k = self._first_trained(stage)
        self.net[:k].requires_grad_(False)

    def _losses(self, x: torch.Tensor, y: torch.Tensor, first: int) -> torch.Tensor:
        """Summed CwC losses of layers first..L, each on its detached input; frozen layers
        (before `first`) run without a graph."""
        h, loss = x, torch.zeros((), device=x.device)
        with torch.no_grad():
            for layer in self.net[:first]:
                h = layer(h)
        for layer in self.net[first:]:
            h = layer(h.detach())
            loss = loss + cwc_loss(h, y, self.n_classes)
        return loss

    def train_epoch(self, stage: Stage, data: Data, gen: torch.Generator) -> torch.Tensor:
        k = self._first_trained(stage)
        self.net.train()  # moving: stopped layers too, BatchNorm on batch statistics (no gradient)
        if self.hp.bn_after_stop == "frozen":
            self.net[:k].eval()  # stopped: BatchNorm on its running statistics

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            return self._losses(train_batch(data, idx, gen), data.y_train[idx], k)

        return minibatch_epoch(self.opt, loss_fn, len(data.y_train), self.hp.batch_size, gen, self.device)

    # ---- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def goodness(self, x: torch.Tensor) -> torch.Tensor:
        """Goodness (N, L, C) of every layer for every class."""
        out, h = [], x
        for layer in self.net:
            h = layer(h)
            out.append(class_goodness(h, self.n_classes))
        return torch.stack(out, 1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return chunked(lambda c: self.goodness(c)[:, -1], x, self._chunk())

    def _chunk(self) -> int:
        biggest = max(c * h * w for c, h, w in models.cwc_shapes(self.arch, self.shape))
        return max(1, 2 ** 24 // biggest)  # ~64 MB per activation

    @torch.no_grad()
    def validate(self, stage: Stage, data: Data) -> dict[str, float]:
        self.net.eval()
        g = chunked(self.goodness, data.x_val, self._chunk())  # (N, L, C)
        y = data.y_val
        loss = sum(F.cross_entropy(g[:, i], y) for i in range(self.L))
        return {"acc": accuracy(g[:, -1], y), "loss": float(loss)}

    def epoch_metrics(self, stage: Stage, data: Data) -> dict[str, float]:
        if not self.hp.report_test_each_epoch:
            return {}
        return {"test_acc": accuracy(self.predict(data.x_test), data.y_test)}

    def layer_accuracies(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.net.eval()
        g = chunked(self.goodness, x, self._chunk())
        return {f"layer{i + 1}": accuracy(g[:, i], y) for i in range(self.L)}

    # ---- analytic cost (convolutions only, as models.cwc_layer_macs) ---------------------------

    def cost(self, stage: Stage) -> Cost:
        k = self._first_trained(stage)
        m = self.layer_macs
        # frozen layers: forward; trained layers: forward + weight gradient (inputs are detached:
        # no input gradient); validation: one pass of every layer
        return Cost(train=sum(m[:k]) + 2 * sum(m[k:]), eval=sum(m))

    def predict_macs(self) -> int:
        return sum(self.layer_macs)


ALGORITHM = CwComp
