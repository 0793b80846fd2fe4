"""A guard for algorithms without a backward pass (pepita, fwdgrad)."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def no_backward():
    """Every reverse-mode entry point (Tensor.backward, autograd.backward, autograd.grad) raises
    while the context is open."""
    def refuse(*args, **kwargs):
        raise AssertionError("backward pass in a forward-only training step")

    saved = torch.Tensor.backward, torch.autograd.backward, torch.autograd.grad
    torch.Tensor.backward = torch.autograd.backward = torch.autograd.grad = refuse
    try:
        yield
    finally:
        torch.Tensor.backward, torch.autograd.backward, torch.autograd.grad = saved
