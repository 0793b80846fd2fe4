"""The worked example of docs/adding-an-algorithm.md: its readout is the ridge solution, and it
learns digits through the same engine as every other algorithm."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bpfree import algorithms
from bpfree.algorithms.base import accuracy
from bpfree.engine import Stopping, fit


def test_elm_readout_is_the_ridge_solution_and_learns_digits(digits):
    torch.manual_seed(0)
    algo = algorithms.get("elm")({"type": "mlp", "widths": [512]}, digits.meta, {"ridge": 1.0}, "cpu")
    res = fit(algo, digits, Stopping(max_epochs=50, patience=5), seed=0)
    assert res.epochs == 1  # a fixed one-epoch stage, not the stopping rule
    A = torch.relu(algo.net.hidden[0](digits.x_train.flatten(1))).detach()
    A1 = torch.cat([A, torch.ones(len(A), 1)], 1)
    Y = F.one_hot(digits.y_train, 10).float()
    W = torch.linalg.solve(A1.T @ A1 + torch.eye(A1.shape[1]), A1.T @ Y).T
    torch.testing.assert_close(algo.net.head.weight, W[:, :-1], rtol=1e-3, atol=1e-4)
    assert accuracy(algo.predict(digits.x_test), digits.y_test) > 85.0
