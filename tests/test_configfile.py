"""A config file is the whole truth: `snakemake --configfile X` runs exactly X (nothing of the
default config/config.yaml merged in), from the repository root, from another directory, and with
--directory. Checked on the specs of the jobs `snakemake -n -p` would run."""
from __future__ import annotations

import copy
import json
import re
import shlex

import pytest
import yaml

from cluster_helpers import TINY, make_repo, snakemake

pytestmark = pytest.mark.slow


def user_config() -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["algorithms"]["bp"]["fixed"] = {"batch_size": 128, "weight_decay": 0.0}  # fixed, so not searched
    cfg["algorithms"]["bp"]["space"] = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    return cfg


def specs(dry_run: str) -> list[dict]:
    """The --spec of every job command that `snakemake -n -p` printed."""
    out = []
    for line in dry_run.splitlines():
        if "bpfree " in line and "--spec" in line:
            words = shlex.split(line.split(">", 1)[0])
            out.append(json.loads(words[words.index("--spec") + 1]))
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = make_repo(tmp_path_factory.mktemp("cf") / "repo")  # its config/config.yaml is the default one
    default = yaml.safe_load((root / "config" / "config.yaml").read_text())
    assert "weight_decay" in default["algorithms"]["bp"]["space"]  # what would leak if it were merged
    x = root.parent / "x.yaml"
    x.write_text(yaml.safe_dump(user_config(), sort_keys=False))
    return root, x


@pytest.mark.parametrize("where", ["root", "elsewhere", "directory"])
def test_configfile_jobs_hold_only_what_it_says(repo, where):
    root, x = repo
    args = ["--configfile", str(x), "-n", "-p"]
    cwd = root
    if where == "elsewhere":
        cwd = root.parent / "elsewhere"
        cwd.mkdir(exist_ok=True)
        args += ["-s", str(root / "Snakefile")]
    elif where == "directory":
        args += ["--directory", "runs/x"]
    out = snakemake(cwd, *args)
    found = specs(out.stdout)
    assert {s["algorithm"] for s in found} == {"bp", "mf"} and {s["architecture"] for s in found} == {"tiny"}
    bp = [s for s in found if s["algorithm"] == "bp"]
    assert bp and all(s["fixed"] == {"batch_size": 128, "weight_decay": 0.0} for s in bp)
    searched = [s for s in bp if "space" in s]
    assert searched and all(set(s["space"]) == {"lr"} for s in searched), "weight_decay is searched"
    assert not re.search(r"results/search/\w+/(mlp-2x256|cnn-3block-small)/", out.stdout)
