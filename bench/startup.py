"""Per-job start-up of the workflow's jobs on digits (not a test): what every job of every study
pays before and around its training.

    python bench/startup.py [--repeats 5] [--src OTHER/src --src src] [--jobs train search collect]
                            [--algorithm bp] [--architecture mlp-2x256]

Runs the jobs the workflow runs (`bpfree train`, a `bpfree search` worker, the `bpfree search
--collect` step) with the default config's settings for one algorithm, cut to one epoch and one
trial and without the idle-power baseline, so a job is almost only its fixed cost. Each `--src`
is a source tree put first on PYTHONPATH (e.g. an export of main's src/ beside this one's); the
variants run interleaved, `--repeats` rounds, and the table gives medians of the job's wall time,
its CPU time (user + system: steadier than wall time on a shared machine), and, for train and
search, the wall time until its first epoch line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_job(cmd: list[str], src: str, log: Path) -> tuple[float, float, float | None]:
    """(wall s, CPU s, wall s to the first epoch line or None) of one job."""
    env = {**os.environ, "PYTHONPATH": src, "BPFREE_CHECKPOINT_EVERY": "60"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    first = None
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as p:
        lines = []
        for line in p.stderr:
            lines.append(line)
            if first is None and " epoch " in line:
                first = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.write_text("".join(lines))
    if p.returncode:
        raise SystemExit(f"startup: {' '.join(cmd)} failed (PYTHONPATH={src}):\n{''.join(lines[-20:])}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", help="source tree(s) to compare (default: this one's src/)")
    ap.add_argument("--jobs", nargs="+", default=["train", "search", "collect"])
    ap.add_argument("--algorithm", default="bp")
    ap.add_argument("--architecture", default="mlp-2x256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--idle", action="store_true",
                    help="keep the config's idle-power baseline, each variant's final runs sharing one --overlap-dir "
                         "(where a stored baseline is reused); default: no baseline, the fixed cost alone")
    a = ap.parse_args()
    srcs = [str(Path(s).resolve()) for s in (a.src or [ROOT / "src"])]
    tmp = Path(tempfile.mkdtemp(prefix="bpfree-startup-"))
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["protocol"]["stopping"]["max_epochs"] = 1
    cfg["protocol"]["search"]["n_trials"] = 1
    if not a.idle:
        cfg["protocol"]["metering"]["idle_seconds"] = 0
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    bpfree = [sys.executable, "-m", "bpfree"]
    env = {**os.environ, "PYTHONPATH": srcs[-1]}
    subprocess.run([*bpfree, "prepare", "--dataset", "digits", "--out", str(tmp / "digits.pt")], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    spec = {}  # each variant's own (another version may know other settings)
    for v, src in enumerate(srcs):
        for kind in ("train", "search"):
            config = tmp / "config.yaml"
            spec[kind, v] = tmp / f"{kind}-{v}.json"
            out = subprocess.run([*bpfree, "spec", "--config", str(config), "--architecture", a.architecture,
                                  "--algorithm", a.algorithm, "--kind", kind], env={**env, "PYTHONPATH": src},
                                 capture_output=True, text=True)
            if out.returncode and "metering" in out.stderr:  # an older version: without the settings it lacks
                old = yaml.safe_load(config.read_text())
                for k in ("alone", "idle_reuse_s"):
                    old["protocol"]["metering"].pop(k, None)
                config = tmp / f"config-{v}.yaml"
                config.write_text(yaml.safe_dump(old))
                out = subprocess.run([*bpfree, "spec", "--config", str(config), "--architecture", a.architecture,
                                      "--algorithm", a.algorithm, "--kind", kind], env={**env, "PYTHONPATH": src},
                                     capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"bpfree spec failed under {src}: {out.stderr.strip()}")
            spec[kind, v].write_text(out.stdout)
    entry = cfg["algorithms"][a.algorithm]
    best = {**entry.get("fixed", {}), **{k: p["low"] for k, p in entry.get("space", {}).items()}}
    (tmp / "best.json").write_text(json.dumps({"params": best}))

    def command(job: str, i: int, v: int) -> list[str]:
        journal = tmp / f"study-{v}-{i}.journal"
        if job == "train":
            return [*bpfree, "train", "--spec", f"@{spec['train', v]}", "--data", str(tmp / "digits.pt"), "--best",
                    str(tmp / "best.json"), "--seed", "0", "--out-dir", str(tmp / f"run-{v}-{i}"), "--threads", "1",
                    *(["--overlap-dir", str(tmp / f"metered-{v}")] if a.idle else [])]
        if job == "search":
            return [*bpfree, "search", "--spec", f"@{spec['search', v]}", "--data", str(tmp / "digits.pt"),
                    "--journal", str(journal), "--worker", "0", "--workers", "1",
                    "--worker-out", str(tmp / f"worker-{v}-{i}.json"), "--threads", "1"]
        return [*bpfree, "search", "--spec", f"@{spec['search', v]}", "--journal", str(journal), "--collect",
                "--best", str(tmp / f"best-{v}-{i}.json")]

    results: dict[tuple[str, int], list[tuple]] = {}
    for i in range(a.repeats):
        for job in a.jobs:  # collect reads the journal its round's search wrote
            for v in range(len(srcs)) if i % 2 == 0 else reversed(range(len(srcs))):
                results.setdefault((job, v), []).append(
                    run_job(command(job, i, v), srcs[v], tmp / f"{job}-{v}-{i}.log"))
    idle = "the config's idle baseline (reused where stored)" if a.idle else "no idle baseline"
    print(f"{a.algorithm} on digits/{a.architecture}, 1 epoch, 1 trial, {idle}; medians of {a.repeats} "
          f"(logs in {tmp})")
    print(f"{'job':<8}{'source':<40}{'wall s':>8}{'CPU s':>8}{'to 1st epoch s':>16}")
    for (job, v), rows in results.items():
        firsts = [r[2] for r in rows if r[2] is not None]
        first = f"{statistics.median(firsts):16.2f}" if firsts else f"{'-':>16}"
        print(f"{job:<8}{srcs[v][-40:]:<40}{statistics.median(r[0] for r in rows):8.2f}"
              f"{statistics.median(r[1] for r in rows):8.2f}{first}")


if __name__ == "__main__":
    main()
