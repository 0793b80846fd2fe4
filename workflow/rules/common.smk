import os
import sys
import bpfree.config as bpcfg
from bpfree import algorithms as bpalg
from bpfree import datasets as bpdatasets
from bpfree import sources as bpsources
from pathlib import Path
from types import SimpleNamespace
import functools


# The schema (defaults filled in) and what it cannot express, before any job; a bad value is a known
# failure: one line naming the key, exit status 2, no traceback. The device is checked where jobs
# run: a cluster's submit host need not have its nodes' GPUs.
bpcfg.check_files(workflow.overwrite_configfiles)  # a key given twice: Snakemake keeps the last
try:
    bpcfg.validate(config, device=workflow.local_exec, base=Path(workflow.basedir))
except bpcfg.ConfigError as e:
    sys.stderr.write(f"bpfree: the config is refused: {e}\n")
    sys.exit(2)

CELLS = bpcfg.cells(config)
SEEDS = config["protocol"]["seeds"]
SRC = Path(workflow.basedir) / "src" / "bpfree"
# The engine every training job runs through (bpfree.sources, the one list that checkpoints and
# provenance use too); editing one of them reruns every search and final run.
CORE_SRC = [str(f) for f in bpsources.core(SRC)]


# Cheap steps run where Snakemake runs (on a cluster: the submit host), not as cluster jobs:
# data preparation here; the best-parameters step and the report declare themselves.
localrules:
    prepare,


wildcard_constraints:
    dataset="|".join(sorted({c[0] for c in CELLS})),
    architecture="[A-Za-z0-9][A-Za-z0-9_.-]*",
    algorithm="[A-Za-z0-9][A-Za-z0-9_.-]*",
    seed=r"\d+",
    worker=r"\d+",


def data_root(wildcards):
    """data_root of the config; a relative path is taken from the repository root, so that
    `snakemake --directory runs/X` finds the same data."""
    root = config.get("data_root")
    return str((Path(workflow.basedir) / root).resolve()) if root else ""


def algo_src(wildcards):
    """The implementation file of the job's algorithm and the package's algorithm modules it
    imports (cafo: dfa; fa, dfa: bp): editing one reruns only the jobs that run its code."""
    impl = config["algorithms"][wildcards.algorithm]["impl"]
    shipped = SRC / "algorithms" / f"{impl}.py"  # beside CORE_SRC, in this checkout
    path = shipped if "." not in impl and shipped.exists() else bpalg.source_file(impl)
    return [str(p) for p in bpalg.with_imports(path)]


def search_spec(wildcards):
    return bpcfg.dumps(bpcfg.search_spec(config, wildcards.architecture, wildcards.algorithm))


def train_spec(wildcards):
    return bpcfg.dumps(bpcfg.train_spec(config, wildcards.architecture, wildcards.algorithm))


def journal(wildcards):
    """One Optuna journal per search spec and code version: a changed space, budget or algorithm
    source starts a fresh study (trials of other code are not reused), an unchanged one resumes,
    also after a mere `touch` (the journal is not an output, so Snakemake never deletes it)."""
    key = _study_key(wildcards.architecture, wildcards.algorithm)
    return f"results/search/{wildcards.dataset}/{wildcards.architecture}/{wildcards.algorithm}/study-{key}.journal"


@functools.cache
def _study_key(architecture, algorithm):
    """Hash of the search spec and the code it runs (read once per Snakemake run, not once per job)."""
    spec = bpcfg.search_spec(config, architecture, algorithm)
    files = [*algo_src(SimpleNamespace(algorithm=algorithm)), *CORE_SRC]
    return bpsources.study_key(spec, files)


WORKERS = config["protocol"]["search"]["workers"]
# GPUs a search worker or final run asks for (SLURM: --gpus; a workstation profile counts them):
# none when the config says cpu, so that a CPU-only cluster needs only `--config device=cpu`.
GPUS = 0 if config["device"] == "cpu" else 1
# Final runs metered alone (protocol.metering.alone) each count `metered=1`, so that a profile's limit
# (`resources: metered: N`) starts no more of them than can run at once: 1 per host on a CPU, 1 per
# GPU; a final run started beyond it would only wait for its lock (bpfree.alone), holding a slot.
METERED = 1 if config["protocol"]["metering"]["alone"] else 0
# On SLURM such a run asks for a node of its own: sbatch --exclusive, or what BPFREE_SLURM_EXCLUSIVE
# says (--exclusive=user, or empty for nothing) on clusters that forbid it (docs/cluster.md).
EXCLUSIVE = os.environ.get("BPFREE_SLURM_EXCLUSIVE", "--exclusive") if METERED else ""


def search_workers(wildcards):
    """The K worker jobs of a study (none when the search is skipped: n_trials = 0)."""
    if config["protocol"]["search"]["n_trials"] == 0:
        return []
    d = f"results/search/{wildcards.dataset}/{wildcards.architecture}/{wildcards.algorithm}"
    return [f"{d}/workers/{k}.json" for k in range(WORKERS)]


def final_runs():
    return [
        f"results/runs/{d}/{a}/{alg}/seed{s}/metrics.json"
        for d, a, alg in CELLS
        for s in SEEDS
    ]
