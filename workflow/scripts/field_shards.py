"""The field study, shard by shard: each shard is a set of Snakemake target files of one tier
config, sized to finish in about two hours of one 1-thread job at a time on a 2-core CPU.

    python workflow/scripts/field_shards.py list                 # every shard, its cost estimate, what is committed
    python workflow/scripts/field_shards.py command t1-mnist-a   # the exact snakemake command of a shard
    python workflow/scripts/field_shards.py run t1-mnist-a       # restore, run, collect, record
    python workflow/scripts/field_shards.py collect t1-mnist-a   # copy a shard's finished files into docs/
    python workflow/scripts/field_shards.py report               # rebuild docs/field.md's tables from docs/

A shard runs in runs/field-<tier>/ (Snakemake's working directory). Its finished per-run files are
committed under docs/results/field/<tier>/, in the same layout as results/: each search's best.json,
trials.csv and worker file, each final run's metrics.json and epochs.csv, and the shard's summary.csv.
Before a shard runs, every committed file of its tier is restored into the working directory with a
fresh timestamp, after the data are prepared and in the order of the DAG (searches before final
runs), so Snakemake counts them as up to date (they carry no Snakemake metadata, so no params or code
trigger fires either) and nothing committed is computed twice. A killed shard resumes from its
journals and checkpoints when run again. Every run of a shard appends a row (when, where, the load,
the commit) to docs/results/field/<tier>/shards.csv.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import math
import re

import pandas as pd

from bpfree import config as bpcfg
from bpfree import io, published
from bpfree import report as bpreport
from bpfree import stats

ROOT = Path(__file__).resolve().parents[2]
TIERS = {"tier1": "config/field-tier1.yaml", "tier2": "config/field-tier2.yaml"}
# Committed runs kept apart from their tier (the report refuses to pool them with it), shown in the
# field page under their own name: tier 1's first final runs, made before jobs flushed subnormal
# floats (their fa, dfa and local-pred times are the CPU's slow path, docs/protocol.md).
ARCHIVED = {"tier1-noflush": "config/field-tier1.yaml"}
# Two papers' protocols, checked with one seed each beside the tiers (another protocol: shown in a
# table of their own, next to the paper's figure, never pooled with a tier).
CHECKS = {"check-predsim-paper": "config/mnist-predsim-paper.yaml",
          "check-cwcomp-authors": "config/mnist-cwcomp-authors.yaml"}
CONFIGS = {**TIERS, **ARCHIVED, **CHECKS}
SEARCH_FILES = ("best.json", "trials.csv", "workers/0.json")
RUN_FILES = ("metrics.json", "epochs.csv")


@dataclass(frozen=True)
class Shard:
    name: str
    tier: str
    dataset: str
    architecture: str | None = None  # None: every architecture of the dataset
    algorithms: tuple[str, ...] = ()  # (): every algorithm of the architecture
    kind: str = "runs"  # "search": the best.json files; "runs": the final runs (their searches first)
    hours: float = 0.0  # estimated hours of one 1-thread job at a time (the tier config's header)

    def cells(self, cfg: dict) -> list[tuple[str, str, str]]:
        return [c for c in bpcfg.cells(cfg) if c[0] == self.dataset
                and (self.architecture is None or c[1] == self.architecture)
                and (not self.algorithms or c[2] in self.algorithms)]

    def targets(self, cfg: dict) -> list[str]:
        if self.kind == "search":
            return [f"results/search/{d}/{a}/{alg}/best.json" for d, a, alg in self.cells(cfg)]
        return [f"results/runs/{d}/{a}/{alg}/seed{s}/metrics.json" for d, a, alg in self.cells(cfg)
                for s in cfg["protocol"]["seeds"]]


MLP_A = ("bp", "mf", "fa", "dfa", "local-pred")
MLP_B = ("local-predsim", "fwdgrad-local")
SHARDS = [
    s
    for ds, tag in (("mnist", "mnist"), ("fashion_mnist", "fmnist"))
    for s in (Shard(f"t1-{tag}-search", "tier1", ds, kind="search", hours=0.6),
              Shard(f"t1-{tag}-a", "tier1", ds, "mlp-2x1000", MLP_A, hours=1.3),
              Shard(f"t1-{tag}-b", "tier1", ds, "mlp-2x1000", MLP_B, hours=1.3),
              Shard(f"t1-{tag}-c", "tier1", ds, "mlp-1x1024", hours=0.8))
]
SHARDS += [  # tier 2: MNIST only; hours from config/field-tier2.yaml's header
    Shard("t2-search", "tier2", "mnist", kind="search", hours=1.0),
    Shard("t2-mlp", "tier2", "mnist", "mlp-3x1000", hours=0.3),
    Shard("t2-fwdgrad", "tier2", "mnist", "mlp-2x1000", hours=0.4),
    Shard("t2-cnn", "tier2", "mnist", "cnn-3block", hours=0.6),
    Shard("t2-cwc-bp", "tier2", "mnist", "cwc-cnn-cfse", ("bp",), hours=1.1),
    Shard("t2-cwc-cwcomp", "tier2", "mnist", "cwc-cnn-cfse", ("cwcomp",), hours=1.0),
]
SHARDS += [  # the papers' protocols; hours: one 1-thread job at a time (the configs' headers)
    Shard("p-predsim", "check-predsim-paper", "mnist", hours=1.0),
    Shard("p-cwcomp", "check-cwcomp-authors", "mnist", hours=2.4),
]
BY_NAME = {s.name: s for s in SHARDS}


def read_config(path: Path) -> dict:
    """A config, validated and checked but not against this machine (its data and device): the
    field page is rebuilt from the committed files where the data are not (a fresh clone)."""
    cfg = io.read_yaml(path)
    bpcfg.validate(cfg, device=False, data=False)
    return cfg


def load_config(tier: str) -> dict:
    return read_config(ROOT / CONFIGS[tier])


def workdir(tier: str) -> Path:
    return ROOT / "runs" / f"field-{tier}"


def committed(tier: str) -> Path:
    return ROOT / "docs" / "results" / "field" / tier


def files_of(target: str) -> list[str]:
    """Every per-run file a target stands for (relative to results/'s parent)."""
    folder = str(Path(target).parent)
    names = SEARCH_FILES if target.endswith("best.json") else RUN_FILES
    return [f"{folder}/{n}" for n in names]


def snakemake_cmd(shard: Shard, cfg: dict, cores: int) -> list[str]:
    """The shard's command. With protocol.metering.alone one final run at a time (`metered=1`): a
    second would only wait for the host's lock (bpfree.alone), holding a core. (`--resources`
    takes every word up to the next option: the targets come after one.)"""
    alone = (cfg["protocol"].get("metering") or {}).get("alone", False)
    return ["snakemake", "--configfile", str(ROOT / CONFIGS[shard.tier]), "--directory", str(workdir(shard.tier)),
            "--snakefile", str(ROOT / "Snakefile"), "--cores", str(cores),
            *(["--resources", "metered=1"] if alone else []), "--keep-going", *shard.targets(cfg)]


def restore(tier: str, cfg: dict) -> int:
    """Copy the tier's committed files into its working directory so that Snakemake counts them as
    done (see `restore_into`)."""
    return restore_into(committed(tier), workdir(tier), ROOT / "Snakefile", ROOT / CONFIGS[tier])


def restore_into(src: Path, dst: Path, snakefile: Path, configfile: Path, env: dict | None = None) -> int:
    """Copy the per-run files under `src`/results into `dst`/results (never over a file already
    there), prepare the data they were made from, then give the restored files fresh timestamps in
    the order of the DAG (searches before final runs, each file newer than what it was made from).
    They carry no Snakemake metadata, so no params or code trigger fires on them. Returns how many
    files were restored."""
    restored = []
    for f in sorted(src.glob("results/**/*")):
        if f.is_file():
            out = dst / f.relative_to(src)
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)
            restored.append(out)
    if not restored:
        return 0
    datasets = sorted({p.relative_to(dst).parts[2] for p in restored})
    subprocess.run(["snakemake", *[f"resources/data/{d}.pt" for d in datasets], "--configfile", str(configfile),
                    "--directory", str(dst), "--snakefile", str(snakefile), "--cores", "1"], check=True, env=env)
    order = sorted(restored, key=lambda p: (p.relative_to(dst).parts[1] != "search",
                                            p.name in ("best.json", "trials.csv"), str(p)))
    now = time.time()
    for i, p in enumerate(order):  # strictly increasing: each file newer than what it was made from
        os.utime(p, (now + i * 1e-3, now + i * 1e-3))
    return len(restored)


def collect(shard: Shard, cfg: dict) -> list[Path]:
    """Copy the shard's finished files into docs/results/field/<tier>/ and write its summary.csv."""
    src, dst = workdir(shard.tier), committed(shard.tier)
    copied, metrics = [], []
    for target in shard.targets(cfg):
        for rel in files_of(target) if (src / target).exists() else []:
            if (src / rel).exists():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, dst / rel)
                copied.append(dst / rel)
        if target.endswith("metrics.json") and (src / target).exists():
            metrics.append(dst / target)
    if metrics:
        out = dst / "shards" / f"{shard.name}.summary.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        bpreport.summarize(bpreport.load_runs(metrics)).to_csv(out, index=False)
    return copied


def record(shard: Shard, started: float, status: str, load_start: tuple, n_restored: int) -> None:
    path = committed(shard.tier) / "shards.csv"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    row = {"shard": shard.name, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "wall_h": round((time.time() - started) / 3600, 3), "status": status, "host": socket.gethostname(),
           "cpus": os.cpu_count(), "commit": commit, "restored_files": n_restored,
           "load_start": " ".join(f"{x:.2f}" for x in load_start),
           "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    path.parent.mkdir(parents=True, exist_ok=True)
    old = pd.read_csv(path) if path.exists() else pd.DataFrame()
    pd.concat([old, pd.DataFrame([row])], ignore_index=True).to_csv(path, index=False)


def status(shard: Shard, cfg: dict) -> str:
    targets = shard.targets(cfg)
    done = sum((committed(shard.tier) / t).exists() for t in targets)
    return f"{done}/{len(targets)} committed"


# ---- docs/field.md, rebuilt from the committed files ----------------------------------------------

FIELD_PAGE = ROOT / "docs" / "field.md"
BEGIN = "<!-- field-tables: begin (python workflow/scripts/field_shards.py report) -->"
END = "<!-- field-tables: end -->"
DASH = bpreport.DASH


def floor_figures() -> dict[str, str]:
    """Percent of floor per MLP algorithm, from docs/floor.md's table (its one home)."""
    out: dict[str, list[str]] = {}
    for line in (ROOT / "docs" / "floor.md").read_text().splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) >= 5 and re.fullmatch(r"\**\d+\**", cols[4]) and re.fullmatch(r"[a-z][a-z-]*( \(.*\))?", cols[0]):
            out.setdefault(cols[0].split(" ")[0], []).append(cols[4].strip("*"))
    return {a: "/".join(v) + " %" for a, v in out.items()}


def _fmt(g: pd.DataFrame, col: str, fmt: str) -> str:
    """mean ± sd (n) of a column of a cell's runs, as the report writes it."""
    return bpreport.fmt_mean_sd(*stats.mean_sd(g[col]), fmt) if col in g else DASH


def _when(tier: str) -> dict[str, str]:
    """Run folder -> 'date of its shard' from shards.csv (the shard that last ran each target)."""
    path = committed(tier) / "shards.csv"
    if not path.exists():
        return {}
    cfg, out = load_config(tier), {}
    for row in pd.read_csv(path).itertuples(index=False):
        if row.shard in BY_NAME:
            for t in BY_NAME[row.shard].targets(cfg):
                out.setdefault(t, row.started_utc[:10])
    return out


def tier_tables(tier: str) -> tuple[list[dict], list[dict], list[str]] | None:
    """The accuracy and cost rows of one tier's committed runs (its report rebuilt under
    docs/results/field/<tier>/report/), and plain-words lines for its verdicts."""
    files = sorted(committed(tier).glob("results/runs/**/metrics.json"))
    if not files:
        return None
    cfg = load_config(tier)
    out_dir = committed(tier) / "report"
    runs = bpreport.run_report(files, out_dir, cfg["protocol"].get("statistics"))
    raw = {(m["dataset"], m["architecture"], m["algorithm"], m["seed"]): m for m in bpreport.load_runs(files)}
    dl = pd.read_csv(out_dir / "deltas.csv")
    field = published.load("field")
    floors, when = floor_figures(), _when(tier)
    acc_rows, cost_rows, words = [], [], []
    for (d, a, alg), g in runs.groupby(["dataset", "architecture", "algorithm"], sort=False):
        delta = dl[(dl.dataset == d) & (dl.architecture == a) & (dl.algorithm == alg)].set_index("metric")
        acc = _fmt(g, "test_accuracy", ".2f")
        if "test_accuracy" in delta.index:
            r = delta.loc["test_accuracy"]
            dtext = (f"{r.estimate:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" if math.isfinite(r.ci_low)
                     else f"{r.estimate:+.2f}" if math.isfinite(r.estimate) else r.status)
            vtext = r.verdict if isinstance(r.verdict, str) and r.verdict else DASH
            cpu = delta.loc["cpu_time_s"] if "cpu_time_s" in delta.index else None
            cost = (f"; CPU time {cpu.estimate:+.0f} % [{cpu.ci_low:+.0f}, {cpu.ci_high:+.0f}]"
                    if cpu is not None and math.isfinite(cpu.ci_low) else "")
            words.append(f"- {d}, {a}, **{alg}**: {vtext} (delta {dtext} pp against bp, {int(r.n_pairs)} paired seeds"
                         f"{cost}). " + (f"Seeds needed: {r.seeds_needed_note}." if isinstance(r.seeds_needed_note, str)
                                         and r.seeds_needed_note else ""))
        else:
            dtext, vtext = "reference", DASH
        pub = field[(field.dataset == d) & (field.variant == alg)]
        theirs = "; ".join(f"{p.test_acc:.2f} ({p.network}"
                           + (f", bp {p.bp_same_network:g} on it" if p.bp_same_network == p.bp_same_network else "")
                           + f"; {p.source.split(' (')[0] if 'BioTorch' in p.source else p.tag})"
                           for p in pub.itertuples()) or DASH
        acc_rows.append({"tier": tier, "dataset": d, "network": a, "algorithm": alg, "locality": g.locality.iloc[0],
                         "test accuracy (%)": acc, "delta vs bp (pp) [95 % CI]": dtext, "verdict": vtext,
                         "published figure (its network; tag or re-run)": theirs})
        seeds = [raw[(d, a, alg, s)] for s in g.seed]
        hosts = sorted({(m.get("provenance") or {}).get("host", "?") for m in seeds})
        dates = sorted({when.get(f"results/runs/{d}/{a}/{alg}/seed{s}/metrics.json", "?") for s in g.seed})
        load = g.load_1m_mean.mean() if "load_1m_mean" in g else float("nan")
        methods = ", ".join(sorted(set(g.energy_method.dropna())))
        cost_rows.append({
            "tier": tier, "dataset": d, "network": a, "algorithm": alg,
            "epochs": f"{g.epochs.mean():.1f}", "wall time (s)": _fmt(g, "train_time_s", ".0f"),
            "CPU time (s)": _fmt(g, "cpu_time_s", ".0f"),
            "train TFLOP": f"{g.train_flops.mean() / 1e12:.1f}", "energy (J)": f"{g.energy_j.mean():.0f} ({methods})",
            "peak memory (MiB)": f"{g.peak_memory_mib.mean():.0f}", "% of floor": floors.get(alg, DASH),
            "ran": f"{', '.join(dates)} on {', '.join(hosts)}, load {load:.1f}" if math.isfinite(load)
            else f"{', '.join(dates)} on {', '.join(hosts)}"})
    return acc_rows, cost_rows, words


def check_rows() -> list[dict]:
    """One row per committed run of the papers' protocols (CHECKS): its test accuracy as every
    run of the benchmark reports it, the best test accuracy over its epochs where the run recorded
    one per epoch (the paper's way of reporting; test-set selection), and the paper's figure."""
    field, out = published.load("field"), []
    for tier in CHECKS:
        cfg = load_config(tier) if (ROOT / CONFIGS[tier]).exists() else {"algorithms": {}}
        when = _when(tier)
        for m in bpreport.load_runs(sorted(committed(tier).glob("results/runs/**/metrics.json"))):
            f = Path(m["_path"])
            d, a, alg, seed = m["dataset"], m["architecture"], m["algorithm"], m["seed"]
            epochs = pd.read_csv(f.with_name("epochs.csv"))
            best_test = epochs["test_acc"].max() if "test_acc" in epochs else float("nan")
            impl = cfg["algorithms"].get(alg, {}).get("impl", alg)
            pub = field[(field.dataset == d) & field.variant.isin([alg, impl])]
            theirs = ("; ".join(f"{p.test_acc:.2f} ({p.network})" for p in pub.itertuples()) if len(pub) else DASH)
            out.append({"check": tier, "dataset": d, "network": a, "algorithm": alg, "seed": seed,
                        "test accuracy (%)": f"{m['test_accuracy']:.2f}",
                        "best test epoch (%)": f"{best_test:.2f}" if best_test == best_test else DASH,
                        "epochs (best)": f"{m['epochs']} ({m.get('best_epoch', DASH)})",
                        "paper's figure (its network)": theirs,
                        "ran": f"{when.get(str(f.relative_to(committed(tier))), '?')} on "
                               f"{(m.get('provenance') or {}).get('host', '?')}"})
    return out


EPOCH_COST = ROOT / "docs" / "results" / "field" / "epoch-cost-cpu.csv"  # bench/epoch_cost.py --csv


def full_protocol_hours(arch: str, alg: str, cost: pd.DataFrame, epochs: int = 30, seeds: int = 5,
                        search_factor: float = 2.5) -> float | None:
    """A rough CPU-hour estimate of one cell under config/field.yaml's full protocol: each stage's
    measured CPU seconds per 1,000 images (train on 50,000, validate on 10,000, set up once on
    both) times `epochs` (or the stage's fixed count), times `seeds`, times `search_factor` for
    its search (the committed 20-trial searches cost about 1.5 times their five final runs).
    None where the cell's cost was not measured."""
    rows = cost[(cost.architecture == arch) & (cost.algorithm == alg)]
    if rows.empty:
        return None
    per_run = sum((r.fixed_epochs if r.fixed_epochs == r.fixed_epochs and r.fixed_epochs else epochs)
                  * (50 * r.cpu_s_per_1000_train + 10 * r.val_cpu_s_per_1000) + 60 * r.setup_cpu_s_per_1000
                  for r in rows.itertuples())
    return per_run * seeds * search_factor / 3600


def pending() -> list[dict]:
    """Cells of config/field.yaml that tier 1 does not hold at its full protocol: those only tier 2
    holds (at its reduced protocol) and those no tier holds, with a rough full-protocol estimate."""
    full = read_config(ROOT / "config" / "field.yaml")
    held = {tier: set(bpcfg.cells(load_config(tier))) for tier in TIERS if (ROOT / TIERS[tier]).exists()}
    cost = pd.read_csv(EPOCH_COST) if EPOCH_COST.exists() else pd.DataFrame(columns=["architecture", "algorithm"])
    out = []
    for d, a, alg in bpcfg.cells(full):
        if (d, a, alg) in held.get("tier1", set()):
            continue
        hours = full_protocol_hours(a, alg, cost)
        out.append({"dataset": d, "network": a, "algorithm": alg,
                    "held by": "tier 2 (reduced protocol)" if (d, a, alg) in held.get("tier2", set()) else "no tier",
                    "full protocol, CPU hours (rough estimate)": DASH if hours is None else f"{hours:.0f}"})
    return out


def write_field_page() -> str:
    """Rebuild the generated part of docs/field.md from docs/results/field/; returns a summary line."""
    acc, cost, words = [], [], []
    for tier in TIERS:  # an archived tier keeps its own report (docs/results/field/<tier>/report), not rows here
        if (ROOT / CONFIGS[tier]).exists() and (got := tier_tables(tier)) is not None:
            acc += got[0]
            cost += got[1]
            words += [f"{tier}:", *got[2]] if got[2] else []
    figures = [f"![accuracy against CPU time, {t}](results/field/{t}/report/plots/accuracy_vs_cost.png)"
               for t in TIERS if (committed(t) / "report" / "plots" / "accuracy_vs_cost.png").exists()]
    archived = [f"[{t}](results/field/{t}/)" for t in ARCHIVED if committed(t).exists()]
    parts = [BEGIN, "", "### Accuracy and verdicts", "",
             bpreport.markdown(pd.DataFrame(acc)) if acc else "No committed run yet.\n",
             "### Cost", "", bpreport.markdown(pd.DataFrame(cost)) if cost else "No committed run yet.\n",
             "fwdgrad-local's floor figure predates the change that carries its tangent by hand; remeasured "
             "after it: 61 % (floor.md).", "",
             *([f"Archived, not in these tables (their own report beside their files): {', '.join(archived)}.", ""]
               if archived else []),
             "### Accuracy against cost", "", *(figures or ["No figure yet."]), "",
             "### Each verdict, as the report gives it", "", *(words or ["No verdict yet."]), "",
             "### Two papers' protocols, checked (one seed each; not pooled with any tier)", "",
             bpreport.markdown(pd.DataFrame(checks)) if (checks := check_rows()) else "No committed run yet.\n",
             "### Pending at the full protocol (config/field.yaml's cells beyond tier 1: for a GPU or a cluster)", "",
             "Rough CPU-hour estimates of one 1-thread job from the measured per-image costs of "
             "`docs/results/field/epoch-cost-cpu.csv` (30 epochs per stage, 5 seeds, the search at 1.5 times the "
             "final runs); a dash where the network's cost was not measured.", "",
             bpreport.markdown(pd.DataFrame(pending())), END]
    text = FIELD_PAGE.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{FIELD_PAGE} lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    FIELD_PAGE.write_text(head + "\n".join(parts) + rest.split(END, 1)[1])
    return f"{FIELD_PAGE}: {len(acc)} cells from docs/results/field/"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("list", "command", "run", "collect", "restore", "report"))
    p.add_argument("shard", nargs="?", help="a shard's name (see list); restore: a tier")
    p.add_argument("--cores", type=int, default=2, help="cores for Snakemake (1-thread jobs: this many at once)")
    a = p.parse_args(argv)
    os.chdir(ROOT)  # the page's paths are the checkout's, wherever the script is called from
    if a.action == "list":
        for tier in sorted({s.tier for s in SHARDS}, key=list(CONFIGS).index):
            if not (ROOT / CONFIGS[tier]).exists():
                continue
            cfg = load_config(tier)
            for s in (s for s in SHARDS if s.tier == tier):
                print(f"{s.name:22s} {tier}  ~{s.hours:.1f} h  {len(s.targets(cfg)):3d} targets  {status(s, cfg)}")
        return 0
    if a.action == "report":
        print(write_field_page())
        return 0
    if a.action == "restore":
        print(f"restored {restore(a.shard, load_config(a.shard))} files into {workdir(a.shard)}")
        return 0
    if a.shard not in BY_NAME:
        p.error(f"unknown shard {a.shard!r}; known: {', '.join(BY_NAME)}")
    shard = BY_NAME[a.shard]
    cfg = load_config(shard.tier)
    if a.action == "command":
        print(" ".join(snakemake_cmd(shard, cfg, a.cores)))
        return 0
    if a.action == "collect":
        print(f"copied {len(collect(shard, cfg))} files into {committed(shard.tier)}")
        return 0
    started, load_start = time.time(), os.getloadavg()
    n = restore(shard.tier, cfg)
    print(f"restored {n} committed files; running {shard.name}: {status(shard, cfg)}", flush=True)
    rc = subprocess.run(snakemake_cmd(shard, cfg, a.cores)).returncode
    copied = collect(shard, cfg)
    record(shard, started, "finished" if rc == 0 else f"snakemake exit {rc}", load_start, n)
    print(f"{shard.name}: snakemake exit {rc}; {len(copied)} files in {committed(shard.tier)}; {status(shard, cfg)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
