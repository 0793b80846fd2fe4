"""Per-job start-up: what a training job imports, and the optimisers that avoid torch._dynamo."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bpfree.algorithms import base

JOB = """
import sys, torch
from bpfree import train  # what `bpfree train` imports
from bpfree.algorithms.base import SGD, adam
w = torch.nn.Linear(4, 3)
opts = [adam(w.parameters(), 1e-3, weight_decay=0.1), adam(w.parameters(), 1e-3, l2=0.1),
        SGD(w.parameters(), lr=0.1, momentum=0.9, fused=True)]
sched = torch.optim.lr_scheduler.LambdaLR(opts[0], lambda e: 0.5)
for opt in opts:
    opt.zero_grad()
    w(torch.randn(2, 4)).sum().backward()
    opt.step()
    opt.load_state_dict(opt.state_dict())
sched.step()
print(sorted(m for m in ("torch._dynamo", "optuna", "snakemake") if m in sys.modules))
"""


def test_a_training_job_imports_neither_dynamo_nor_optuna():
    out = subprocess.run([sys.executable, "-c", JOB], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("ours, theirs, kw", [
    (base.AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    (base.Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 0.1}),
    (base.SGD, torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.1}),
])
def test_the_unwrapped_optimisers_update_bitwise_as_torchs(ours, theirs, kw):
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(7, 5, generator=g)
    grads = [torch.randn(7, 5, generator=g) for _ in range(3)]
    params = []
    for cls in (ours, theirs):
        p = p0.clone().requires_grad_()
        opt = cls([p], fused=True, **kw)
        for grad in grads:
            opt.zero_grad()
            p.grad = grad.clone()
            opt.step()
        params.append(p.detach())
    assert torch.equal(params[0], params[1])
    assert not torch.equal(params[0], p0)


COLLECT = """
import sys
from bpfree import cli
cli.main(sys.argv[1:])
print("imported torch" if "torch" in sys.modules else "no torch", file=sys.stderr)
"""


def test_the_collect_step_writes_best_and_trials_without_importing_torch(tmp_path, digits_path):
    """`bpfree search --collect` (one job per study) reads the journal only: importing torch was
    about 1.2 of its 2 s."""
    import copy
    import json

    from bpfree import config as bpcfg
    from bpfree import search
    from cluster_helpers import TINY

    cfg = copy.deepcopy(TINY)
    cfg["device"] = "cpu"
    cfg["comparisons"] = [{"architecture": "tiny", "algorithms": ["bp"]}]
    cfg["protocol"]["search"] = {"n_trials": 2, "pruner": {"type": "none"},
                                 "stopping": {"max_epochs": 2, "patience": 2}}
    bpcfg.validate(cfg)
    spec = bpcfg.search_spec(cfg, "tiny", "bp")
    search.run_search(spec, digits_path, tmp_path / "s.journal")
    out = subprocess.run([sys.executable, "-c", COLLECT, "search", "--spec", json.dumps(spec), "--journal",
                          str(tmp_path / "s.journal"), "--collect", "--best", str(tmp_path / "best.json")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.strip().endswith("no torch"), out.stderr
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["n_trials"] == 2 and set(best["searched"]) == set(spec["space"])
    assert best["provenance"]["packages"]["torch_cuda"] == torch.version.cuda  # read without importing torch
    assert (tmp_path / "trials.csv").read_text().count("\n") == 3
