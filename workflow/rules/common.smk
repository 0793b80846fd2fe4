from snakemake.utils import validate
import bpfree.config as bpcfg
from bpfree import algorithms as bpalg
from pathlib import Path


validate(config, "../schemas/config.schema.yaml")
bpcfg.check(config)

CELLS = bpcfg.cells(config)
SEEDS = config["protocol"]["seeds"]
SRC = Path(workflow.basedir) / "src" / "bpfree"
# The engine every training job runs through; editing it reruns every search and final run.
CORE_SRC = [str(SRC / f) for f in ("engine.py", "models.py", "algorithms/base.py", "data.py")]


wildcard_constraints:
    dataset="|".join(sorted({c[0] for c in CELLS})),
    architecture="[A-Za-z0-9][A-Za-z0-9_.-]*",
    algorithm="[A-Za-z0-9][A-Za-z0-9_.-]*",
    seed=r"\d+",


def algo_src(wildcards):
    """The implementation file of the job's algorithm: editing it reruns only its jobs."""
    impl = config["algorithms"][wildcards.algorithm]["impl"]
    return str(bpalg.source_file(impl))


def search_spec(wildcards):
    return bpcfg.dumps(bpcfg.search_spec(config, wildcards.architecture, wildcards.algorithm))


def train_spec(wildcards):
    return bpcfg.dumps(bpcfg.train_spec(config, wildcards.architecture, wildcards.algorithm))


def journal(wildcards):
    """One Optuna journal per search spec: a changed space or budget starts a fresh study, an
    unchanged one resumes (the journal is not an output, so Snakemake never deletes it)."""
    spec = bpcfg.search_spec(config, wildcards.architecture, wildcards.algorithm)
    return f"results/search/{wildcards.dataset}/{wildcards.architecture}/{wildcards.algorithm}/study-{bpcfg.spec_hash(spec)}.journal"


def final_runs():
    return [
        f"results/runs/{d}/{a}/{alg}/seed{s}/metrics.json"
        for d, a, alg in CELLS
        for s in SEEDS
    ]
