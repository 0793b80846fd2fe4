"""The SLURM profile (dry run; the sbatch call a training job gets, through fake SLURM commands),
GPU pinning on a workstation, and rerun selectivity: adding a seed, adding an algorithm, touching
one algorithm's source or a module of the metering or report package selects exactly the jobs it
affects."""
from __future__ import annotations

import base64
import copy
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_helpers import REPO, TINY, env, make_repo, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow

CELL = "results/search/digits/tiny"
RUNS = "results/runs/digits/tiny"


def test_slurm_profile_dry_run_on_default_config(tmp_path):
    """What CI runs: `snakemake --workflow-profile profiles/slurm -n` with the repository's config."""
    root = make_repo(tmp_path / "repo")
    out = snakemake(root, "--workflow-profile", "profiles/slurm", "-n")
    jobs = planned_jobs(out.stdout)
    assert {r for r, _ in jobs} >= {"prepare", "search_worker", "search", "train", "report"}
    train = out.stdout[out.stdout.index("rule train:"):]
    res = re.search(r"^    resources: (.*)$", train, re.M).group(1)
    assert "gpu=1" in res and "mem_mb=16000" in res and "runtime=240" in res and "cpus_per_task=4" in res
    # torch gets as many threads as SLURM gives CPUs, also with more CPUs than this (submit) host has
    cpus = (os.cpu_count() or 1) + 1
    out = snakemake(root, "--workflow-profile", "profiles/slurm", "-n", extra_env={"BPFREE_SLURM_CPUS": str(cpus)})
    jobs = [j for j in out.stdout.split("\n\n") if re.search(r"^rule (search_worker|train):$", j, re.M)]
    assert jobs and all(re.search(rf"cpus_per_task={cpus}\b", j) and f" --threads {cpus} " in j for j in jobs), jobs[:1]
    # cheap steps run on the submit host (a dry run does not show it: ask the workflow)
    code = ("from pathlib import Path; from snakemake.api import SnakemakeApi; from snakemake.settings.types "
            "import OutputSettings, ResourceSettings, StorageSettings\n"
            "with SnakemakeApi(OutputSettings()) as api:\n"
            "    w = api.workflow(snakefile=Path('Snakefile'), workdir=Path('.'), resource_settings=ResourceSettings(),"
            " storage_settings=StorageSettings()); w.dag(); print(sorted(w._workflow._localrules))")
    local = subprocess.run([sys.executable, "-c", code], cwd=root, env=env(), capture_output=True, text=True)
    assert local.stdout.strip().splitlines()[-1] == "['prepare', 'report', 'search']", local.stderr[-2000:]


FAKES = {
    # sbatch records its command line and refuses, so that Snakemake stops right after submitting
    "sbatch": 'printf "%s\\n" "$*" >> "$FAKE_SLURM_LOG"; echo "sbatch: error: fake cluster" >&2; exit 1',
    # plugin 2.8.0 guesses an account with `sacct ... | tail -1` run without a shell, which a real sacct
    # refuses: so does this one, and the account must come from the profile (BPFREE_SLURM_ACCOUNT)
    "sacct": 'echo "sacct: error: Invalid field requested" >&2; exit 1',
    "sacctmgr": 'echo testacct',  # the plugin checks the given account with sacctmgr
    "sshare": 'echo testacct',
    "sinfo": 'printf "PARTITION\\ngpu*\\ncpu\\n"',  # default partition: gpu
    "scontrol": 'printf "MaxArraySize = 1001\\nMinJobAge = 300 sec\\n"',
    "squeue": 'true',
    "scancel": 'true',
}


def test_fake_sbatch_sees_the_training_resources(tmp_path):
    """Submit the two final runs of a cell through the profile: one job each asking for one GPU,
    16 GB, 240 minutes and 4 CPUs (4 torch threads), with the account of BPFREE_SLURM_ACCOUNT (read from the sbatch
    command line the plugin builds). With `--config device=cpu` the same jobs ask for no GPU."""
    cfg = copy.deepcopy(TINY)
    cfg["protocol"]["seeds"] = [0, 1]
    cfg["protocol"].setdefault("metering", {})["alone"] = True  # so a final run asks for a node of its own
    root = make_repo(tmp_path / "repo", cfg)
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, body in FAKES.items():
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    # the inputs of the train jobs exist; only the train rule may run, so nothing upstream is planned
    (root / "resources/data").mkdir(parents=True)
    (root / "resources/data/digits.pt").write_bytes(b"")
    (root / f"{CELL}/bp").mkdir(parents=True)
    (root / f"{CELL}/bp/best.json").write_text('{"params": {"lr": 0.001, "weight_decay": 0.0, "batch_size": 128}}')

    def submit(*config: str) -> str:
        log = tmp_path / "sbatch.log"
        log.unlink(missing_ok=True)
        out = snakemake(root, "--workflow-profile", "profiles/slurm", "--allowed-rules", "train", "--retries", "0",
                        "--slurm-init-seconds-before-status-checks", "1",
                        f"{RUNS}/bp/seed0/metrics.json", f"{RUNS}/bp/seed1/metrics.json", *config, check=False,
                        extra_env={"PATH": f"{fake}{os.pathsep}{env()['PATH']}", "FAKE_SLURM_LOG": str(log),
                                   "BPFREE_SLURM_ACCOUNT": "testacct"})
        assert out.returncode != 0  # the fake sbatch refuses
        calls = log.read_text().splitlines() if log.exists() else []
        # one sbatch per final run: the plugin's array mode can wait forever (docs/cluster.md)
        assert len(calls) == 2, f"expected one submission per final run, got {calls}\n{out.stderr[-3000:]}"
        return calls

    assert not any("--gpus" in call for call in submit("--config", "device=cpu"))
    for call in submit():
        assert "--gpus=1" in call and "--array" not in call
        assert re.search(r"--mem 16000( |$)", call)
        assert re.search(r"-t '?240'?( |$)", call)
        assert "-p gpu" in call and "-A testacct" in call
        assert "rule_train" in call
        assert " --exclusive" in call  # a whole node: RAPL and the wall time count this run alone
        # 4 CPUs, and Snakemake inside the job gives the rule (torch) 4 threads
        assert "--cpus-per-task=4" in call and "--cores 4 " in call and base64.b64encode(b"train=4").decode() in call


def test_gpu_slots_pin_each_process_to_a_free_device(tmp_path):
    """Two processes take different GPUs; a SIGKILLed holder frees its GPU for the next one."""
    code = ("import os, sys, time; from bpfree import gpuslots; g = gpuslots.pin('auto', poll_s=0.1); "
            "print(g, os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(float(sys.argv[1]))")
    e = {**env(), "BPFREE_GPUS": "0,1", "BPFREE_GPU_LOCK_DIR": str(tmp_path / "locks"), "BPFREE_GPU_PIN": "1"}
    e.pop("CUDA_VISIBLE_DEVICES", None)

    def start(hold: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code, str(hold)], env=e, stdout=subprocess.PIPE, text=True)

    a, b = start(60), start(60)
    ga, gb = a.stdout.readline().split()[0], b.stdout.readline().split()[0]
    assert {ga, gb} == {"0", "1"}
    a.send_signal(signal.SIGKILL)
    a.wait()
    c = start(0)
    assert c.stdout.readline().split() == [ga, ga]  # the killed holder's GPU, and no other
    c.wait()
    b.kill()
    b.wait()
    # CUDA_VISIBLE_DEVICES already set (as SLURM does): untouched
    out = subprocess.run([sys.executable, "-c", "from bpfree import gpuslots; print(gpuslots.pin('auto'))"],
                         env={**e, "CUDA_VISIBLE_DEVICES": "3"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


def _profile(name: str, monkeypatch, **environ: str) -> dict:
    """profiles/<name>/config.yaml as Snakemake reads it (a YTE template) under `environ`."""
    import yte

    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    with open(REPO / "profiles" / name / "config.yaml") as f:
        return yte.process_yaml(f)


def test_profiles_keep_final_runs_alone_and_count_gpu_slots(monkeypatch, capsys):
    """The workstation counts slots (a final run takes all of a GPU's), one alone final run per GPU
    and per host locally (SLURM's --exclusive comes from the train rule: test_fake_sbatch_...)."""
    p = _profile("workstation-gpu", monkeypatch, BPFREE_GPUS="0,1", BPFREE_GPU_SLOTS="3")
    assert p["resources"] == {"gpu": 6, "metered": 2} and p["set-resources"]["train"] == {"gpu": 3}
    assert _profile("default", monkeypatch)["resources"] == {"metered": 1}
    with pytest.raises(SystemExit) as e:
        _profile("workstation-gpu", monkeypatch, BPFREE_GPU_SLOTS="none")
    assert e.value.code == 2 and "BPFREE_GPU_SLOTS = 'none'" in capsys.readouterr().err
    assert "slurm_extra" not in _profile("slurm", monkeypatch)["set-resources"]["train"]  # the rule's stays


@pytest.fixture(scope="module")
def finished_repo(tmp_path_factory):
    """The tiny workflow, run to the end once."""
    root = make_repo(tmp_path_factory.mktemp("rerun") / "repo", TINY)
    snakemake(root, "--cores", "2")
    assert (root / "results/summary.csv").exists()
    return root


def _plan(root: Path, config: dict) -> set[tuple[str, str]]:
    write_config(root, config)
    try:
        return planned_jobs(snakemake(root, "-n").stdout)
    finally:
        write_config(root, TINY)


def test_nothing_to_do_after_a_full_run(finished_repo):
    assert planned_jobs(snakemake(finished_repo, "-n").stdout) == set()


def test_adding_a_seed_runs_only_its_final_runs(finished_repo):
    cfg = copy.deepcopy(TINY)
    cfg["protocol"]["seeds"] = [0, 1]
    assert _plan(finished_repo, cfg) == {
        ("train", f"{RUNS}/bp/seed1/metrics.json"), ("train", f"{RUNS}/mf/seed1/metrics.json"),
        ("report", "results/main.html"), ("all", "")}


def test_adding_an_algorithm_runs_only_its_jobs(finished_repo):
    cfg = copy.deepcopy(TINY)
    cfg["algorithms"]["mf-sum"] = {**copy.deepcopy(cfg["algorithms"]["mf"]), "fixed": {
        **cfg["algorithms"]["mf"]["fixed"], "predict": "sum"}}
    cfg["comparisons"][0]["algorithms"].append("mf-sum")
    assert _plan(finished_repo, cfg) == {
        ("search_worker", f"{CELL}/mf-sum/workers/0.json"), ("search", f"{CELL}/mf-sum/best.json"),
        ("train", f"{RUNS}/mf-sum/seed0/metrics.json"), ("report", "results/main.html"), ("all", "")}


def test_editing_one_algorithm_reruns_only_its_jobs(finished_repo):
    """An edit of mf.py reruns mf's search and final runs (and the report), nothing of bp. (A bare
    `touch` reruns nothing: Snakemake 9 compares the recorded checksum of a changed-mtime input.)"""
    src = finished_repo / "src/bpfree/algorithms/mf.py"
    text, st = src.read_text(), src.stat()
    try:
        os.utime(src, (time.time() + 60, time.time() + 60))  # newer than every output
        assert planned_jobs(snakemake(finished_repo, "-n").stdout) == set()  # touched, same content
        src.write_text(text + "\n# an edit\n")
        jobs = planned_jobs(snakemake(finished_repo, "-n").stdout)
    finally:
        src.write_text(text)
        os.utime(src, (st.st_atime, st.st_mtime))
    assert jobs == {
        ("search_worker", f"{CELL}/mf/workers/0.json"), ("search", f"{CELL}/mf/best.json"),
        ("train", f"{RUNS}/mf/seed0/metrics.json"), ("report", "results/main.html"), ("all", "")}



@pytest.mark.parametrize("module, jobs", [
    ("metering/segments.py", {("train", f"{RUNS}/bp/seed0/metrics.json"), ("train", f"{RUNS}/mf/seed0/metrics.json"),
                              ("report", "results/main.html"), ("all", "")}),
    ("report/tables.py", {("report", "results/main.html"), ("all", "")}),
])
def test_editing_a_module_of_a_package_reruns_the_jobs_that_run_it(finished_repo, module, jobs):
    """The metering and report packages (once metering.py and report.py): an edit of any of their
    modules reruns the final runs and the report, or the report alone, as an edit of the file did."""
    src = finished_repo / "src/bpfree" / module
    text, st = src.read_text(), src.stat()
    try:
        src.write_text(text + "\n# an edit\n")
        planned = planned_jobs(snakemake(finished_repo, "-n").stdout)
    finally:
        src.write_text(text)
        os.utime(src, (st.st_atime, st.st_mtime))
    assert planned == jobs


def test_every_result_writer_is_atomic():
    """Result files go through bpfree.io: its writers, or a write to the temporary name of an
    `io.atomic` block (datasets.py, checkpoint.py): a killed job never leaves a truncated result."""
    writes = (r"\.to_csv\(", r"\bjson\.dump\(", r"(?<!io)\.write_text\(", r"(?<!io\.)\bsavefig\(",
              r"\btorch\.save\(", r"\bopen\([^)]*[\"']w")
    offenders = []
    for f in (REPO / "src/bpfree").rglob("*.py"):
        if f.name == "io.py":
            continue
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            if "/proc/" in line:  # not a result file
                continue
            for pat in writes:
                if re.search(pat, line) and not any("io.atomic(" in x for x in lines[max(0, i - 2):i + 1]):
                    offenders.append(f"{f.relative_to(REPO)}:{i + 1}: {line.strip()}")
    assert not offenders, "non-atomic writes (use bpfree.io):\n" + "\n".join(offenders)
