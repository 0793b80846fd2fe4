"""Kill-and-resume check shared by the algorithms whose state includes a learning-rate schedule."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from bpfree.checkpoint import Checkpoint
from bpfree.data import Data
from bpfree.engine import Stopping, fit


def assert_resume_is_exact(make: Callable, data: Data, stopping: Stopping, path: Path, kill_after: int) -> None:
    """Train `make()` without a break; then train a fresh `make()` killed after epoch `kill_after`
    (checkpointing every epoch) and resume it: the resumed run must end at the same learning rate
    with the same weights."""
    def run(kill_at=None):
        algo = make()

        def on_epoch(record):
            if record["epoch"] == kill_at:
                raise KeyboardInterrupt
        try:
            fit(algo, data, stopping, seed=0, checkpoint=Checkpoint(path, "resume", every_s=0), on_epoch=on_epoch)
        except KeyboardInterrupt:
            return None
        return algo

    whole = run()
    path.unlink()
    assert run(kill_at=kill_after) is None
    resumed = run()
    assert resumed.opt.param_groups[0]["lr"] == whole.opt.param_groups[0]["lr"]
    for a, b in zip(whole.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)
