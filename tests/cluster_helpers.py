"""Shared by test_cluster.py, test_crash.py and test_parallel_search.py: a throw-away copy of the
workflow with a tiny config, and helpers to run Snakemake and bpfree in it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# digits, a one-hidden-layer MLP, one seed, a few epochs: seconds per job on a laptop core.
TINY = {
    "datasets": ["digits"],
    "architectures": {"tiny": {"type": "mlp", "widths": [16]}},
    "comparisons": [{"architecture": "tiny", "algorithms": ["bp", "mf"]}],
    "algorithms": {
        "bp": {"impl": "bp", "fixed": {"batch_size": 128},
               "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                         "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True}}},
        "mf": {"impl": "mf", "fixed": {"batch_size": 128, "l2": 0.0, "mode": "greedy", "predict": "last"},
               "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}},
    },
    "protocol": {"seeds": [0], "stopping": {"max_epochs": 2, "patience": 2},
                 "search": {"n_trials": 1, "workers": 1}},
}


def env() -> dict:
    """Subprocess environment: this venv first on PATH, one torch thread, quiet CodeCarbon."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "CODECARBON_LOG_LEVEL": "error", "BPFREE_GPU_PIN": "0"}


def make_repo(root: Path, config: dict | None = None) -> Path:
    """A copy of the workflow (Snakefile, rules, profiles, the package sources and schema that jobs
    declare as inputs) with `config` as config/config.yaml. The jobs run the installed bpfree."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    for d in ("workflow", "profiles", "src"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "config").mkdir(exist_ok=True)
    if config is None:
        shutil.copy(REPO / "config" / "config.yaml", root / "config" / "config.yaml")
    else:
        write_config(root, config)
    return root


def write_config(root: Path, config: dict) -> None:
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(root: Path, *args: str, check: bool = True, extra_env: dict | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "--nolock", *args]
    out = subprocess.run(cmd, cwd=root, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def planned_jobs(dry_run_output: str) -> set[tuple[str, str]]:
    """(rule, first output) of every job a `snakemake -n` output lists ('' for rules without output)."""
    jobs, rule, output = set(), None, ""
    for line in dry_run_output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            if rule:
                jobs.add((rule, output))
            rule, output = m.group(1), ""
        elif rule and line.startswith("    output: "):
            output = line.split(": ", 1)[1].split(",")[0].strip()
        elif rule and line.startswith("Job stats:"):
            break
    if rule:
        jobs.add((rule, output))
    return jobs
