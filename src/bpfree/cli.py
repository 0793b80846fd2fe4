"""`bpfree`: one subcommand per workflow stage, each usable without Snakemake."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bpfree.errors import BpfreeError

EPILOG = """A job's spec is the JSON slice of the config that decides its result; the workflow passes
it with --spec. By hand, give --config FILE --architecture A --algorithm X instead."""


def _json_arg(text: str, option: str) -> dict:
    """A JSON object given inline or as @FILE; ConfigError naming `option` (and the file) otherwise."""
    from bpfree import io
    from bpfree.config import ConfigError

    if text.startswith("@"):
        value = io.read_json(text[1:], f"{option} file")
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{option} = {text[:60]!r}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: expected a JSON object, got {type(value).__name__}")
    return value


def _config_spec(path: str, architecture: str, algorithm: str, kind: str) -> dict:
    from bpfree import config

    fn = config.search_spec if kind == "search" else config.train_spec
    return fn(config.load(path), architecture, algorithm)


def _spec(args: argparse.Namespace, kind: str, declared: bool = True) -> dict:
    if args.spec:
        from bpfree import config

        return config.check_spec(_json_arg(args.spec, "--spec"), kind, declared)
    if not (args.config and args.architecture and args.algorithm):
        raise BpfreeError("give --spec, or --config with --architecture and --algorithm")
    return _config_spec(args.config, args.architecture, args.algorithm, kind)


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="job spec as JSON, or @FILE")
    p.add_argument("--config", help="config file (instead of --spec)")
    p.add_argument("--architecture", help="architecture name in the config (with --config)")
    p.add_argument("--algorithm", help="algorithm name in the config (with --config)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def cmd_prepare(a: argparse.Namespace) -> None:
    from bpfree.datasets import prepare

    _outputs("prepare", [a.out])
    meta = prepare(a.dataset, a.data_root or None, a.out)
    print(json.dumps(meta))


def _pin_gpu(spec: dict, whole: bool = False) -> None:
    """On a multi-GPU machine without CUDA_VISIBLE_DEVICES, take one slot of a GPU, or a `whole`
    one (a final run), and pin this process to it (bpfree.gpuslots)."""
    from bpfree import gpuslots

    gpu = gpuslots.pin(spec.get("device", "auto"), whole=whole)
    if gpu is not None:
        print(f"bpfree: pinned to GPU {gpu} (CUDA_VISIBLE_DEVICES={gpu})", file=sys.stderr, flush=True)


def _outputs(cmd: str, files: list[str | Path | None]) -> None:
    """Before a job's work: its output folders can be written (FileError naming one that cannot),
    and the temporary files an interrupted earlier run of it left beside its outputs are removed."""
    from bpfree import io

    files = [Path(f) for f in files if f]
    io.check_outputs(files)
    for stale in io.remove_stale_tmp(files):
        print(f"bpfree {cmd}: removed {stale}, left by an interrupted write", file=sys.stderr, flush=True)


def cmd_search(a: argparse.Namespace) -> None:
    from bpfree import study as studies

    spec = _spec(a, "search", declared=not a.collect)
    _outputs("search", [a.journal, a.worker_out, a.best, a.trials or (a.best and Path(a.best).with_name("trials.csv"))])
    from bpfree import provenance

    # provenance is the code about to run (collected now); n_trials 0: the fixed settings are the best
    study, prov = None, provenance.collect(spec)
    if spec["search"]["n_trials"] > 0 and a.collect:
        for f in a.worker_files or []:  # each worker job's summary: truncated or malformed is named
            studies.check_worker_file(f)
        study = studies.collect(spec, a.journal)
    elif spec["search"]["n_trials"] > 0:
        if not a.data:
            raise BpfreeError("--data is required (unless --collect)")
        if a.worker is not None and not 0 <= a.worker < a.workers:
            raise BpfreeError(f"--worker {a.worker} is not in 0..{a.workers - 1} (--workers {a.workers})")
        _pin_gpu(spec)
        from bpfree import alone, search
        from bpfree.device import resolve_device

        device = resolve_device(spec["device"])
        prov = {**prov, **provenance.hardware(device)}  # after pinning: where trials run
        label = f"search {Path(a.data).stem}/{spec['architecture']}/{spec['algorithm']} worker {a.worker or 0}"
        with alone.Hold(alone.device_key(device), False, label):  # an alone final run waits for it, and it for one
            study = search.run_search(spec, a.data, a.journal, n_trials=a.n_trials, threads=a.threads,
                                      exclusive=not a.shared and a.workers == 1, worker=a.worker, workers=a.workers)
    prov, warning = provenance.finished(prov, spec)
    if warning:
        print(warning, file=sys.stderr)
    if a.worker_out:
        from bpfree import io

        summary = studies.worker_summary(study, a.worker or 0, a.workers) if study is not None else {}
        io.write_json(a.worker_out, {**summary, "provenance": prov})
    if a.best:
        best = studies.write_outputs(spec, study, a.best, a.trials or Path(a.best).with_name("trials.csv"), prov,
                                    a.journal)
        print(json.dumps(best["params"]))


def cmd_train(a: argparse.Namespace) -> None:
    from bpfree.train import run_final

    every = a.checkpoint_every
    if every is None:
        env = os.environ.get("BPFREE_CHECKPOINT_EVERY", "60")
        try:
            every = float(env)
        except ValueError:
            raise BpfreeError(f"BPFREE_CHECKPOINT_EVERY = {env!r} is not a number of seconds") from None
    spec = _spec(a, "train")
    _pin_gpu(spec, whole=True)  # a final run has its GPU to itself
    every = None if every < 0 else every
    m = run_final(spec, a.data, a.best, a.seed, a.out_dir, threads=a.threads, checkpoint_every=every,
                  overlap_dir=a.overlap_dir)
    print(json.dumps({k: m[k] for k in ("test_accuracy", "epochs", "train_time_s", "energy_j", "energy_method")}))


def cmd_report(a: argparse.Namespace) -> None:
    from bpfree.report import output_paths, run_report

    if a.statistics and a.config:
        raise BpfreeError("bpfree report: give --statistics or --config, not both")
    stats = _json_arg(a.statistics, "--statistics") if a.statistics else None
    if a.config:
        stats = _config_statistics(a.config)
    if bool(a.summary) == bool(a.metrics):
        raise BpfreeError("bpfree report: give metrics.json files, or --summary CSV (not both)")
    _outputs("report", output_paths(a.out_dir, from_summary=bool(a.summary)))
    try:
        if a.summary:
            from bpfree.report import report_from_summary
            df = report_from_summary(a.summary, a.out_dir, statistics=stats)
        else:
            df = run_report(a.metrics, a.out_dir, statistics=stats)
    except ValueError as e:  # a bad statistics setting, named in e
        raise BpfreeError(str(e)) from None
    print(f"{len(df)} runs summarised into {a.out_dir}")


def _config_statistics(path: str) -> dict:
    """protocol.statistics of a config file (what the workflow's report rule passes), read without
    the config's other checks: a report can be rebuilt where the data are not."""
    from bpfree import io

    cfg = io.read_yaml(path)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("protocol", {}), dict):
        raise BpfreeError(f"--config {path} is not a bpfree config (a mapping with `protocol`)")
    return (cfg.get("protocol") or {}).get("statistics") or {}


def cmd_doctor(a: argparse.Namespace) -> None:
    from bpfree import doctor

    doctor.main(as_json=a.json)


def cmd_spec(a: argparse.Namespace) -> None:
    from bpfree import config

    print(config.dumps(_config_spec(a.config, a.architecture, a.algorithm, a.kind)))


def cmd_settings(a: argparse.Namespace) -> None:
    from bpfree import algorithms, hparams

    try:
        cls = algorithms.get(a.impl)
    except ValueError as e:
        raise BpfreeError(str(e)) from None
    print(f"{a.impl}: locality {cls.LOCALITY}; architectures {', '.join(cls.ARCHITECTURES)}")
    for line in hparams.describe(cls.Settings):
        print(f"  {line}")


class _DatasetHelp(argparse.HelpFormatter):
    """`prepare --help` names the registered datasets, reading the registry (which imports torch)
    only when the help is shown: every other command, the collect step's among them, skips it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "dataset":
            from bpfree.datasets import REGISTRY

            return f"one of {', '.join(REGISTRY)} (bpfree.datasets.REGISTRY)"
        return super()._get_help_string(action)


def _stage_parsers(sub) -> None:
    """prepare, search and train: the workflow's jobs."""
    p = sub.add_parser("prepare", help="read, verify, split and save a dataset as tensors",
                       formatter_class=_DatasetHelp)
    p.add_argument("--dataset", required=True, help="a dataset of bpfree.datasets.REGISTRY")
    p.add_argument("--data-root", default=None, help="folder in torchvision's layout (not needed for digits)")
    p.add_argument("--out", required=True, help="output file, e.g. resources/data/digits.pt")
    p.set_defaults(fn=cmd_prepare)

    p = sub.add_parser("search", help="Optuna search of one (dataset, architecture, algorithm)", epilog=EPILOG)
    _spec_args(p)
    p.add_argument("--data", help="prepared dataset (from `bpfree prepare`); not needed with --collect")
    p.add_argument("--journal", required=True, help="Optuna journal file; a rerun resumes it")
    p.add_argument("--best", help="write the best parameters (JSON) here")
    p.add_argument("--trials", help="write all trials (CSV) here (default: beside --best)")
    p.add_argument("--n-trials", type=int, default=None, help="total budget (default: the spec's)")
    p.add_argument("--shared", action="store_true",
                   help="other workers share this journal: do not mark running trials as failed")
    p.add_argument("--worker", type=int, default=None,
                   help="index of this worker (0..K-1) of a parallel search; its killed trials are failed on restart")
    p.add_argument("--workers", type=int, default=1, help="K, the number of workers sharing the journal")
    p.add_argument("--worker-out", help="write this worker's summary (JSON) here")
    p.add_argument("--collect", action="store_true",
                   help="run no trial: check the finished study (every worker done) and write --best/--trials")
    p.add_argument("--worker-files", nargs="*", metavar="FILE",
                   help="with --collect: the workers' --worker-out files, checked to be complete")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("train", help="one final run with the best parameters and a seed", epilog=EPILOG)
    _spec_args(p)
    p.add_argument("--data", required=True, help="prepared dataset")
    p.add_argument("--best", required=True, help="best.json from `bpfree search`")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True,
                   help="writes metrics.json, epochs.csv and, where a power reading exists, power_trace.csv here")
    p.add_argument("--overlap-dir", metavar="DIR",
                   help="folder where the final runs of one study record their windows: metrics.json then "
                        "names the runs that shared this host (bpfree.overlap; the workflow gives logs/metered)")
    p.add_argument("--checkpoint-every", type=float, metavar="SECONDS",
                   help="save OUT_DIR/checkpoint.pt after an epoch when this many seconds passed since the "
                        "last save (0: every epoch; negative: never); a rerun resumes from it "
                        "(default: $BPFREE_CHECKPOINT_EVERY or 60)")
    p.set_defaults(fn=cmd_train)


def _tool_parsers(sub) -> None:
    """report, doctor, spec and settings."""
    p = sub.add_parser("report", help="summary.csv, table.md and plots from finished runs")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--statistics", help="the config's protocol.statistics as JSON, or @FILE of JSON (bootstrap "
                   "resamples, seed, confidence, interval, target_fraction, verdict margins, verdict_method, alpha, "
                   "power, max_seeds, multiplicity, family; defaults otherwise)")
    p.add_argument("--config", help="take protocol.statistics from this config file (YAML), as the workflow does; "
                   "e.g. --config config/field-tier1.yaml")
    p.add_argument("--summary", help="recompute the deltas, verdicts and published claims (deltas.csv, deltas.md, "
                   "deltas.html) from a recorded summary.csv instead of metrics.json files")
    p.add_argument("metrics", nargs="*", help="metrics.json files of final runs")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("doctor", help="which energy-measurement methods this machine offers, the device, versions")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_doctor)

    p = sub.add_parser("spec", help="print the spec of a job from a config file")
    p.add_argument("--config", required=True, help="config file")
    p.add_argument("--architecture", required=True, help="architecture name in the config")
    p.add_argument("--algorithm", required=True, help="algorithm name in the config")
    p.add_argument("--kind", choices=("search", "train"), default="train",
                   help="the search job's spec (with the space and budget) or a final run's")
    p.set_defaults(fn=cmd_spec)

    p = sub.add_parser("settings", help="an algorithm's declared settings: type, range or choices, default, meaning")
    p.add_argument("impl", help="implementation name (bp, mf, fa, dfa, local, ...) or a dotted module path")
    p.set_defaults(fn=cmd_settings)


class _Version(argparse.Action):
    """`bpfree --version`: the installed version and the checkout's commit (read only when asked)."""

    def __call__(self, parser, namespace, values, option_string=None):
        import importlib.metadata

        from bpfree import sources

        try:
            version = importlib.metadata.version("bpfree")
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        commit = sources.git("rev-parse", "--short", "HEAD") or "unknown (not a checkout)"
        print(f"bpfree {version}, commit {commit}")
        parser.exit()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bpfree", description=__doc__, epilog=EPILOG)
    ap.add_argument("--version", action=_Version, nargs=0, help="print the version and commit, and exit")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _stage_parsers(sub)
    _tool_parsers(sub)
    args = ap.parse_args(argv)
    try:
        args.fn(args)
    except BpfreeError as e:  # a known failure, named in its message: one line, no traceback
        print(f"bpfree {args.cmd}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except BrokenPipeError:  # `bpfree settings mf | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
