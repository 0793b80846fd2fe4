"""A corpus of bad inputs: each is refused, at the earliest point where it can be known, with a
message that names the key or the file (and the value).

Config keys are refused by `bpfree.config.validate` (what the workflow runs before any job; a few
cases go through `snakemake -n` in a copied repository too); data files, result files, journals,
checkpoints and command-line arguments are refused by the `bpfree` command that reads them, as one
line with exit status 2 and no traceback.

docs/errors.md lists every case and its message; regenerate it after changing a case or a message:

    .venv/bin/python tests/test_bad_inputs.py docs/errors.md
"""
from __future__ import annotations

import contextlib
import copy
import errno
import io as _io
import json
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from cluster_helpers import TINY, make_repo, snakemake  # noqa: E402

from bpfree import cli, config, io  # noqa: E402
from bpfree import study as studies  # noqa: E402
from bpfree.errors import BpfreeError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # config, snakemake, data, result, journal, checkpoint, cli, disk
    what: str  # the input, in words
    run: Callable[[Path, Path], str]  # (temp folder, prepared digits) -> the refusal's message
    needles: tuple[str, ...]  # what the message names; "{tmp}" stands for the temp folder


CASES: list[Case] = []


# ---- config keys: refused by the config check, before any job --------------------------------

def config_refusal(check: Callable[[], object]) -> str:
    """The message of the ConfigError that `check()` raises (AssertionError if it accepts)."""
    try:
        check()
    except BpfreeError as e:  # ConfigError; a config file that cannot be read is a FileError
        return str(e)
    raise AssertionError("the config was accepted")


def config_case(id: str, what: str, edit: Callable[[dict, Path], object], *needles: str) -> None:
    def run(tmp: Path, digits: Path) -> str:
        cfg = copy.deepcopy(DEFAULT)
        edit(cfg, tmp)
        return config_refusal(lambda: config.validate(cfg))

    CASES.append(Case(id, "config", what, run, needles))


def algo(name: str, part: str, **values) -> Callable[[dict, Path], None]:
    return lambda c, tmp: c["algorithms"][name].setdefault(part, {}).update(values)


def no_search(c: dict, tmp: Path) -> None:
    c["protocol"]["search"]["n_trials"] = 0
    for name, entry in c["algorithms"].items():  # every other required setting fixed: only bp lacks lr
        if name != "bp":
            entry["fixed"].update({k: p.get("low", (p.get("choices") or [None])[0]) for k, p in entry["space"].items()})


config_case("fixed-misspelt-key", "`fixed: {batch_sise: 64}`", lambda c, t: c["algorithms"]["bp"].update(
    fixed={"batch_sise": 64}), "algorithms.bp.fixed.batch_sise", "did you mean 'batch_size'")
config_case("batch-size-zero", "`batch_size: 0`", algo("bp", "fixed", batch_size=0),
            "algorithms.bp.fixed.batch_size = 0")
config_case("batch-size-string", '`batch_size: "128"`', algo("bp", "fixed", batch_size="128"),
            "algorithms.bp.fixed.batch_size = '128'", "expected an integer")
config_case("lr-bound-nan", "an `lr` bound `.nan`", lambda c, t: c["algorithms"]["bp"]["space"]["lr"].update(
    low=math.nan), "algorithms.bp.space.lr.low = nan")
config_case("no-search-no-fixed-lr", "`n_trials: 0` with no fixed `lr`", no_search,
            "algorithms.bp", "'lr' is required", "n_trials = 0")
config_case("mf-mode-typo", "`mf` with `mode: greedyy`", algo("mf", "fixed", mode="greedyy"),
            "algorithms.mf.fixed.mode = 'greedyy'", "did you mean 'greedy'")
config_case("ff-on-cnn", "`ff` compared on a CNN architecture", lambda c, t: c["comparisons"][1]["algorithms"].append(
    "ff"), "comparisons[1]", "ff", "cnn-3block-small", "'cnn'")
config_case("mf-on-mlp-with-batchnorm", "`mf` compared on an mlp with `batchnorm: true`",
            lambda c, t: c["architectures"]["mlp-2x256"].update(batchnorm=True), "comparisons[0]",
            "mf builds the plain mlp network", "batchnorm: true")
config_case("device-cuda-without-gpu", "`device: cuda` on a machine where torch sees no CUDA device",
            lambda c, t: c.update(device="cuda"), "device = 'cuda'")
config_case("device-cuda-index", "`device: cuda:3`", lambda c, t: c.update(device="cuda:3"), "device = 'cuda:3'")
config_case("lr-bound-negative", "a negative `lr` bound", lambda c, t: c["algorithms"]["mf"]["space"]["lr"].update(
    low=-1e-3), "algorithms.mf.space.lr.low = -0.001")
config_case("lr-bound-inf", "an `lr` bound `.inf`", lambda c, t: c["algorithms"]["mf"]["space"]["lr"].update(
    high=math.inf), "algorithms.mf.space.lr.high = inf")
config_case("bounds-inverted", "`low` above `high`", lambda c, t: c["algorithms"]["bp"]["space"]["weight_decay"].update(
    low=1e-2, high=1e-4), "algorithms.bp.space.weight_decay.low = 0.01 is above")
config_case("log-range-from-zero", "a log-scale range starting at 0", lambda c, t: c["algorithms"]["bp"]["space"][
    "weight_decay"].update(low=0.0), "algorithms.bp.space.weight_decay.low = 0.0", "log-scale")
config_case("range-without-high", "a float range without `high`", lambda c, t: c["algorithms"]["bp"]["space"][
    "lr"].pop("high"), "algorithms.bp.space.lr", "`high`")
config_case("fixed-lr-zero", "`lr: 0`", algo("bp", "fixed", lr=0), "algorithms.bp.fixed.lr = 0")
config_case("fixed-lr-inf", "`lr: .inf`", algo("bp", "fixed", lr=math.inf), "algorithms.bp.fixed.lr = inf")
config_case("fixed-lr-null", "`lr: null`", algo("bp", "fixed", lr=None), "algorithms.bp.fixed.lr = null")
config_case("batch-size-bool", "`batch_size: true`", algo("bp", "fixed", batch_size=True),
            "algorithms.bp.fixed.batch_size = True")
config_case("batch-size-fraction", "`batch_size: 64.5`", algo("bp", "fixed", batch_size=64.5),
            "algorithms.bp.fixed.batch_size = 64.5")
config_case("fixed-and-searched", "`lr` both fixed and searched", algo("bp", "fixed", lr=1e-3),
            "algorithms.bp", "'lr' is both fixed and searched")
config_case("weight-decay-on-adam-l2", "`weight_decay` for `mf`, whose Adam takes an L2 penalty",
            algo("mf", "fixed", weight_decay=1e-4), "algorithms.mf.fixed.weight_decay", "`l2`")
config_case("l2-on-adamw", "`l2` for `bp`, whose AdamW takes decoupled decay", algo("bp", "fixed", l2=1e-4),
            "algorithms.bp.fixed.l2", "`weight_decay`")
config_case("protocol-key-in-fixed", "`seed` among an algorithm's fixed settings", algo("mf", "fixed", seed=1),
            "algorithms.mf.fixed.seed", "belongs under protocol")
config_case("protocol-key-in-entry", "`n_trials` on one algorithm", lambda c, t: c["algorithms"]["mf"].update(
    n_trials=100), "algorithms.mf", "'n_trials'")
config_case("space-type-mismatch", "a string setting searched as a float range", lambda c, t: c["algorithms"]["mf"][
    "space"].update(mode={"type": "float", "low": 0, "high": 1}) or c["algorithms"]["mf"]["fixed"].pop("mode"),
    "algorithms.mf.space.mode.type = 'float'")
config_case("space-bad-choice", "a categorical choice that does not exist", lambda c, t: c["algorithms"]["mf"][
    "space"].update(predict={"type": "categorical", "choices": ["last", "summ"]}) or c["algorithms"]["mf"]["fixed"].pop(
    "predict"), "algorithms.mf.space.predict.choices[1] = 'summ'")
config_case("int-searched-as-float", "`batch_size` searched as a float range", lambda c, t: c["algorithms"]["bp"][
    "space"].update(batch_size={"type": "float", "low": 32, "high": 256}) or c["algorithms"]["bp"]["fixed"].pop(
    "batch_size"), "algorithms.bp.space.batch_size.type = 'float'")
config_case("empty-space-with-search", "`space: {}` while the search runs", lambda c, t: c["algorithms"]["ff"].update(
    space={}, fixed={**c["algorithms"]["ff"]["fixed"], "lr": 1e-3}), "algorithms.ff.space is empty")
config_case("cafo-loss-typo", "`loss: cee` for CaFo", algo("cafo-rand-ce", "fixed", loss="cee"),
            "algorithms.cafo-rand-ce.fixed.loss = 'cee'")
config_case("cafo-unused-setting", "`dfa_lr` for random CaFo blocks", algo("cafo-rand-ce", "fixed", dfa_lr=1e-3),
            "algorithms.cafo-rand-ce.fixed.dfa_lr = 0.001", "does not use dfa_lr")
config_case("ff-downstream-without-lr", "`ff` predicting downstream without `downstream_lr`",
            algo("ff", "fixed", predict="downstream"), "algorithms.ff.fixed.downstream_lr", "downstream")
config_case("unknown-impl", "`impl: nosuchalgo`", lambda c, t: c["algorithms"]["mf"].update(impl="nosuchalgo"),
            "algorithms.mf.impl = 'nosuchalgo'")
config_case("unknown-algorithm-compared", "a comparison naming an undefined algorithm",
            lambda c, t: c["comparisons"][0]["algorithms"].append("backprop2"),
            "comparisons[0].algorithms", "'backprop2'")
config_case("unknown-architecture-compared", "a comparison on an undefined architecture",
            lambda c, t: c["comparisons"][0].update(architecture="mlp-9x9"), "comparisons[0].architecture = 'mlp-9x9'")
config_case("comparison-dataset-not-listed", "a comparison on a dataset not under `datasets`",
            lambda c, t: c["comparisons"][0].update(datasets=["mnist"]), "comparisons[0].datasets", "'mnist'")
config_case("mlp-without-widths", "an MLP architecture without `widths`",
            lambda c, t: c["architectures"]["mlp-2x256"].pop("widths"), "architectures.mlp-2x256", "`widths`")
config_case("unknown-dataset", "`datasets: [digits, svhn]`", lambda c, t: c.update(datasets=["digits", "svhn"]),
            "datasets[1] = 'svhn'")
config_case("mnist-without-data-root", "`mnist` with `data_root: null`", lambda c, t: c.update(datasets=["mnist"]),
            "data_root = null", "mnist")
config_case("data-root-missing", "`data_root` naming no folder", lambda c, t: c.update(
    datasets=["mnist"], data_root=str(t / "nowhere")), "data_root = '{tmp}/nowhere'")
config_case("data-root-without-dataset", "`data_root` without the dataset's folder", lambda c, t: c.update(
    datasets=["mnist"], data_root=str(t)), "data_root = '{tmp}'", "{tmp}/MNIST")
config_case("patience-zero", "`patience: 0`", lambda c, t: c["protocol"]["stopping"].update(patience=0),
            "protocol.stopping.patience = 0")
config_case("n-trials-negative", "`n_trials: -1`", lambda c, t: c["protocol"]["search"].update(n_trials=-1),
            "protocol.search.n_trials = -1")
config_case("no-seeds", "`seeds: []`", lambda c, t: c["protocol"].update(seeds=[]), "protocol.seeds")
config_case("unknown-top-level-key", "a misspelt top-level key", lambda c, t: c.update(limit_trian=100),
            "'limit_trian' was unexpected")

config_case("int-step-wider-than-range", "an int search range whose `step` is wider than the range",
            lambda c, t: (c["algorithms"]["bp"]["fixed"].pop("batch_size"), c["algorithms"]["bp"]["space"].update(
                batch_size={"type": "int", "low": 32, "high": 64, "step": 100})),
            "algorithms.bp.space.batch_size.step = 100 is wider than the range 32..64")
config_case("step-not-dividing-range", "a search range whose `step` does not divide it",
            lambda c, t: c["algorithms"]["bp"]["space"]["lr"].update(low=1e-3, high=1e-2, log=False, step=4e-3),
            "algorithms.bp.space.lr.step = 0.004 does not divide the range")
config_case("impl-relative", "`impl: .bp` (a relative module name)", lambda c, t: c["algorithms"]["bp"].update(
    impl=".bp"), "algorithms.bp.impl = '.bp'", "is not a module name")
config_case("margin-unknown-metric", "a verdict margin for a misspelt metric `test_acuracy`",
            lambda c, t: c["protocol"].setdefault("statistics", {}).update(margins={"test_acuracy": 0.3}),
            "protocol.statistics.margins.test_acuracy: not a compared metric", "test_accuracy")
config_case("country-unknown", "`country_iso_code: XXX` (no carbon intensity in CodeCarbon)",
            lambda c, t: c["protocol"]["metering"].update(country_iso_code="XXX"),
            "protocol.metering.country_iso_code = 'XXX'", "world average")
config_case("alone-not-boolean", "`alone: yes please` (not true or false)",
            lambda c, t: c["protocol"]["metering"].update(alone="yes please"), "protocol.metering.alone = 'yes please'")
config_case("idle-reuse-negative", "`idle_reuse_s: -1`", lambda c, t: c["protocol"]["metering"].update(idle_reuse_s=-1),
            "protocol.metering.idle_reuse_s = -1")


def load_case(id: str, what: str, text: str | None, *needles: str) -> None:
    def run(tmp: Path, digits: Path) -> str:
        path = tmp / "config.yaml"
        if text is not None:
            path.write_text(text)
        return config_refusal(lambda: config.load(path))

    CASES.append(Case(id, "config", what, run, needles))


load_case("config-file-missing", "`--config` naming no file", None, "{tmp}/config.yaml")
load_case("config-not-yaml", "a config file that is not YAML", "datasets: [digits\n", "{tmp}/config.yaml",
          "not valid YAML")
load_case("config-not-a-mapping", "a config file holding a list", "- digits\n", "a config is a mapping")
load_case("config-duplicate-key", "a config file that gives `bp:` twice under `algorithms`",
          "algorithms:\n  bp: {impl: bp}\n  bp: {impl: fa}\n", "{tmp}/config.yaml, line 3, column 3",
          "the key 'bp' is given twice (first on line 2)")
load_case("config-yaml-line", "a YAML syntax error (a tab for indentation)", "datasets:\n\t- digits\n",
          "{tmp}/config.yaml, line 2, column 1", "not valid YAML")
load_case("config-empty", "an empty config file", "", "config file {tmp}/config.yaml is empty")


# ---- through Snakemake: refused before any job ---------------------------------------------------

def snakemake_refusal(id: str, root: Path, args: tuple[str, ...], line_with: str) -> str:
    """The line holding `line_with` of `snakemake -n ARGS` in `root`, which must exit with status 2,
    with no traceback and nothing made."""
    out = snakemake(root, "-n", *args, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 2, f"{id}: snakemake -n exited {out.returncode}:\n{text[-2000:]}"
    assert not (root / "resources").exists() and not (root / "results").exists()
    assert "Traceback" not in text and 'File "' not in text, f"{id}: a traceback for a known failure:\n{text}"
    return next((line.strip() for line in text.splitlines() if line_with in line), text[-2000:])


def snakemake_case(id: str, what: str, edit: Callable[[dict], object], *needles: str) -> None:
    def run(tmp: Path, digits: Path) -> str:
        cfg = copy.deepcopy(TINY)
        edit(cfg)
        return snakemake_refusal(id, make_repo(tmp / "repo", cfg), (), needles[0])

    CASES.append(Case(id, "snakemake", what, run, needles))


snakemake_case("snakemake-fixed-misspelt-key", "`fixed: {batch_sise: 64}`, through `snakemake -n`",
               lambda c: c["algorithms"]["bp"].update(fixed={"batch_sise": 64}), "algorithms.bp.fixed.batch_sise")
snakemake_case("snakemake-device-cuda", "`device: cuda` without a GPU, through `snakemake -n`",
               lambda c: c.update(device="cuda"), "device = 'cuda'")
snakemake_case("snakemake-space-not-a-range", "`space: {lr: -1}` (a number, not a range), through `snakemake -n`",
               lambda c: c["algorithms"]["bp"].update(space={"lr": -1}), "algorithms.bp.space.lr = -1")
snakemake_case("snakemake-mf-on-cnn", "`mf` on a CNN, through `snakemake -n`", lambda c: c.update(
    architectures={"tiny": {"type": "cnn", "channels": [4]}}), "comparisons[0]: algorithm mf on architecture tiny")


def configfile_case(id: str, what: str, configfile: Callable[[Path], str], *needles: str) -> None:
    """`snakemake -n --configfile X` with a bad X: one line, exit status 2, no traceback."""
    def run(tmp: Path, digits: Path) -> str:
        return snakemake_refusal(id, make_repo(tmp / "repo", TINY), ("--configfile", configfile(tmp)), "refused")

    CASES.append(Case(id, "snakemake", what, run, needles))


configfile_case("snakemake-configfile-missing", "a misspelt `--configfile` path",
                lambda t: str(t / "confg.yaml"), "cannot read config file {tmp}/confg.yaml")
configfile_case("snakemake-configfile-folder", "a folder given as `--configfile`",
                lambda t: str(t), "cannot read config file {tmp}", "Is a directory")
configfile_case("snakemake-configfile-yaml-error", "a `--configfile` with a YAML syntax error",
                lambda t: str(written(t / "c.yaml", "datasets: [digits\n")), "{tmp}/c.yaml, line 2",
                "not valid YAML")
configfile_case("snakemake-configfile-duplicate-key", "a `--configfile` that gives `protocol:` twice",
                lambda t: str(written(t / "c.yaml", yaml.safe_dump(TINY) + "protocol: {seeds: [0]}\n")),
                "{tmp}/c.yaml", "the key 'protocol' is given twice")


# ---- files and arguments: refused by the command that reads them (one line, exit status 2) ------

CFG = copy.deepcopy(TINY)
CFG["protocol"]["stopping"] = {"max_epochs": 1, "patience": 1}
CFG["protocol"]["search"] = {"n_trials": 2, "workers": 1, "pruner": {"type": "none"}}
TRAIN = config.train_spec(CFG, "tiny", "bp")
SEARCH = config.search_spec(CFG, "tiny", "bp")
PARAMS = {"lr": 1e-3, "batch_size": 128}


def refused(argv: list[str], env: dict | None = None) -> str:
    """The one error line of `bpfree argv`, which must exit with status 2 and no traceback."""
    err = _io.StringIO()
    with contextlib.redirect_stderr(err), pytest.MonkeyPatch.context() as mp:
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        try:
            cli.main(argv)
        except SystemExit as e:
            code = e.code
        else:
            raise AssertionError(f"bpfree {' '.join(argv)} succeeded")
    text = err.getvalue()
    errors = [line for line in text.splitlines() if line.startswith(f"bpfree {argv[0]}: error: ")]
    assert code == 2 and "Traceback" not in text and len(errors) == 1, (code, text[-2000:])
    return errors[0]


def train_argv(tmp: Path, digits: Path, best: Path | None = None, out: Path | None = None,
               spec: dict = TRAIN) -> list[str]:
    if best is None:
        best = tmp / "best.json"
        io.write_json(best, {"params": PARAMS})
    return ["train", "--spec", json.dumps(spec), "--data", str(digits), "--best", str(best), "--seed", "0",
            "--out-dir", str(out or tmp / "run"), "--threads", "1", "--checkpoint-every", "-1"]


def cli_case(id: str, kind: str, what: str, argv: Callable[[Path, Path], list[str]], *needles: str,
             env: dict | None = None) -> None:
    CASES.append(Case(id, kind, what, lambda tmp, digits: refused(argv(tmp, digits), env), needles))


def written(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def truncated_data(tmp: Path, digits: Path) -> Path:
    blob = digits.read_bytes()
    return written(tmp / "data.pt", blob[: len(blob) // 2])


def data_without(tmp: Path, digits: Path) -> Path:
    blob = torch.load(digits, weights_only=True)
    del blob["x_train"]
    torch.save(blob, tmp / "data.pt")
    return tmp / "data.pt"


cli_case("data-missing", "data", "a prepared data file that does not exist",
         lambda t, d: train_argv(t, t / "none.pt"), "prepared data {tmp}/none.pt", "not found")
cli_case("data-truncated", "data", "a prepared `.pt` file cut in half",
         lambda t, d: train_argv(t, truncated_data(t, d)), "prepared data {tmp}/data.pt", "truncated")
cli_case("data-not-torch", "data", "a prepared `.pt` file that is text",
         lambda t, d: train_argv(t, written(t / "data.pt", "hello")), "prepared data {tmp}/data.pt")
cli_case("data-lacks-split", "data", "a prepared file without its training images",
         lambda t, d: train_argv(t, data_without(t, d)), "prepared data {tmp}/data.pt", "lacks x_train")
def label_out_of_range(tmp: Path, digits: Path) -> Path:
    blob = torch.load(digits, weights_only=True)
    blob["y_train"][0] = blob["meta"]["n_classes"]
    torch.save(blob, tmp / "data.pt")
    return tmp / "data.pt"


cli_case("data-label-out-of-range", "data", "a prepared file with a label outside the classes",
         lambda t, d: train_argv(t, label_out_of_range(t, d)), "prepared data {tmp}/data.pt",
         "labels in 0..10, for n_classes = 10")
cli_case("prepare-out-is-folder", "cli", "`bpfree prepare --out` naming a folder",
         lambda t, d: ["prepare", "--dataset", "digits", "--out", str(t)], "the output {tmp} is a folder")
cli_case("train-checkpoint-is-folder", "cli", "a run folder whose `checkpoint.pt` is a folder",
         lambda t, d: (t / "run" / "checkpoint.pt").mkdir(parents=True) or train_argv(t, d),
         "the output {tmp}/run/checkpoint.pt is a folder")
cli_case("prepare-unknown-dataset", "data", "`bpfree prepare --dataset svhn`",
         lambda t, d: ["prepare", "--dataset", "svhn", "--out", str(t / "x.pt")], "unknown dataset 'svhn'")
cli_case("prepare-mnist-without-root", "data", "`bpfree prepare --dataset mnist` without `--data-root`",
         lambda t, d: ["prepare", "--dataset", "mnist", "--out", str(t / "x.pt")], "mnist", "data_root")
cli_case("prepare-mnist-missing-files", "data", "`--data-root` without MNIST's files",
         lambda t, d: ["prepare", "--dataset", "mnist", "--data-root", str(t), "--out", str(t / "x.pt")],
         "{tmp}/MNIST/raw/train-images-idx3-ubyte", "md5")

cli_case("best-missing", "result", "a best.json that does not exist",
         lambda t, d: train_argv(t, d, best=t / "none.json"), "best.json {tmp}/none.json does not exist")
cli_case("best-truncated", "result", "a truncated best.json",
         lambda t, d: train_argv(t, d, best=written(t / "best.json", '{"params": {"lr": 0.0')),
         "best.json {tmp}/best.json is truncated or malformed")
cli_case("best-without-params", "result", "a best.json without `params`",
         lambda t, d: train_argv(t, d, best=written(t / "best.json", '{"value": 97.0}')),
         "best.json {tmp}/best.json has no `params`")
cli_case("best-unknown-setting", "result", "a best.json whose params hold a misspelt setting",
         lambda t, d: train_argv(t, d, best=written(t / "best.json",
                                                    json.dumps({"params": {**PARAMS, "batch_sise": 6}}))),
         "{tmp}/best.json: params.batch_sise")
cli_case("best-wrong-type", "result", "a best.json whose `lr` is a string",
         lambda t, d: train_argv(t, d, best=written(t / "best.json", json.dumps({"params": {**PARAMS, "lr": "fast"}}))),
         "{tmp}/best.json: params.lr = 'fast'")


def diverging(tmp: Path, digits: Path) -> list[str]:
    best = written(tmp / "best.json", json.dumps({"params": {"lr": 1e30, "batch_size": 128}}))
    return train_argv(tmp, digits, best=best)


cli_case("run-diverges", "result", "hyperparameters whose training loss becomes NaN", diverging,
         "digits/tiny/bp seed 0 diverged", "{tmp}/best.json", "training loss is nan")
def exploding(tmp: Path, digits: Path) -> list[str]:
    best = written(tmp / "best.json", json.dumps({"params": {"lr": 1e8, "batch_size": 128}}))
    spec = {**TRAIN, "stopping": {"max_epochs": 3, "patience": 3}}  # the chance rule needs 3 epochs
    return train_argv(tmp, digits, best=best, spec=spec)


cli_case("run-explodes-finite", "result", "hyperparameters whose training explodes but stays finite (lr 1e8)",
         exploding, "digits/tiny/bp seed 0 diverged", "{tmp}/best.json", "no result is written")
cli_case("output-folder-unwritable", "result", "an output folder that cannot be created or written",
         lambda t, d: train_argv(t, d, out=written(t / "file", "") / "run"),
         "cannot write to the output folder {tmp}/file/run")


def metrics(tmp: Path, **changes) -> Path:
    m = {"dataset": "digits", "architecture": "tiny", "algorithm": "bp", "seed": 0, "test_accuracy": 95.0,
         "train_time_s": 1.0, "energy_j": 1.0, "epochs": 1}
    m.update(changes)
    for k in [k for k, v in changes.items() if v is KeyError]:
        del m[k]
    return written(tmp / "metrics.json", json.dumps(m, allow_nan=True))


def report_argv(tmp: Path, path: Path) -> list[str]:
    return ["report", "--out-dir", str(tmp / "out"), str(path)]


cli_case("metrics-truncated", "result", "a truncated metrics.json",
         lambda t, d: report_argv(t, written(t / "metrics.json", '{"dataset": "dig')),
         "metrics.json {tmp}/metrics.json is truncated or malformed")
cli_case("metrics-missing", "result", "a metrics.json that does not exist",
         lambda t, d: report_argv(t, t / "none.json"), "metrics.json {tmp}/none.json does not exist")
cli_case("metrics-not-object", "result", "a metrics.json holding a list",
         lambda t, d: report_argv(t, written(t / "metrics.json", "[1, 2]")), "{tmp}/metrics.json", "not a JSON object")
cli_case("metrics-lacks-accuracy", "result", "a metrics.json without `test_accuracy`",
         lambda t, d: report_argv(t, metrics(t, test_accuracy=KeyError)), "{tmp}/metrics.json", "lacks test_accuracy")
cli_case("metrics-accuracy-nan", "result", "`test_accuracy: NaN` fed to the report",
         lambda t, d: report_argv(t, metrics(t, test_accuracy=math.nan)), "{tmp}/metrics.json", "test_accuracy = nan")
cli_case("metrics-accuracy-null", "result", "`test_accuracy: null` fed to the report",
         lambda t, d: report_argv(t, metrics(t, test_accuracy=None)), "{tmp}/metrics.json", "test_accuracy = None")
cli_case("metrics-accuracy-string", "result", '`test_accuracy: "95"` fed to the report',
         lambda t, d: report_argv(t, metrics(t, test_accuracy="95")), "{tmp}/metrics.json", "test_accuracy = '95'")
cli_case("metrics-accuracy-impossible", "result", "`test_accuracy: 150` fed to the report",
         lambda t, d: report_argv(t, metrics(t, test_accuracy=150.0)), "{tmp}/metrics.json",
         "test_accuracy = 150.0 is not a percentage")
cli_case("metrics-energy-negative", "result", "a negative `energy_j` fed to the report",
         lambda t, d: report_argv(t, metrics(t, energy_j=-5.0)), "{tmp}/metrics.json", "energy_j = -5.0 is negative")


def run_folder(tmp: Path, epochs_csv: str | None) -> Path:
    """A run's metrics.json (3 epochs) with an epochs.csv of `epochs_csv` beside it (None: none)."""
    if epochs_csv is not None:
        written(tmp / "epochs.csv", epochs_csv)
    return metrics(tmp, epochs=3)


cli_case("epochs-csv-missing", "result", "a run folder without its epochs.csv",
         lambda t, d: report_argv(t, run_folder(t, None)), "{tmp}/epochs.csv is missing")
cli_case("epochs-csv-truncated", "result", "an epochs.csv cut after its first epoch",
         lambda t, d: report_argv(t, run_folder(t, "epoch,val_acc,seconds\n1,90.0,1.0\n")),
         "{tmp}/epochs.csv holds 1 epochs, its metrics.json 3")
cli_case("best-other-algorithm", "result", "a best.json written for another algorithm",
         lambda t, d: train_argv(t, d, best=written(t / "best.json", json.dumps(
             {"params": PARAMS, "algorithm": "mf", "architecture": "tiny"}))),
         "best.json {tmp}/best.json was made for algorithm 'mf'")
cli_case("best-other-network", "result", "a best.json written for another network of the same name",
         lambda t, d: train_argv(t, d, best=written(t / "best.json", json.dumps(
             {"params": PARAMS, "algorithm": "bp", "arch": {"type": "mlp", "widths": [512]}}))),
         "best.json {tmp}/best.json was made for arch")
cli_case("report-summary-missing", "cli", "`bpfree report --summary` naming no file",
         lambda t, d: ["report", "--out-dir", str(t / "out"), "--summary", str(t / "none.csv")],
         "--summary {tmp}/none.csv does not exist")
cli_case("report-summary-empty", "cli", "`bpfree report --summary` naming an empty file",
         lambda t, d: ["report", "--out-dir", str(t / "out"), "--summary", str(written(t / "s.csv", ""))],
         "--summary {tmp}/s.csv is not readable as CSV")
cli_case("report-bad-statistics", "cli", "`--statistics '{\"resamples\": 5}'`",
         lambda t, d: ["report", "--out-dir", str(t / "out"), "--statistics", '{"resamples": 5}', str(metrics(t))],
         "statistics.resamples = 5")


def study(tmp: Path, states: list[str]) -> Path:
    """A journal whose trials end in `states` (complete, pruned, diverged)."""
    journal = tmp / "study.journal"
    s = studies.make_study(SEARCH, journal)
    for state in states:
        t = s.ask()
        if state == "diverged":
            t.set_user_attr("diverged", "training loss is nan in stage all, epoch 1")
        s.tell(t, 90.0 if state == "complete" else None,
               state=optuna.trial.TrialState.COMPLETE if state == "complete" else optuna.trial.TrialState.PRUNED)
    return journal


def collect_argv(tmp: Path, journal: Path, *extra: str) -> list[str]:
    return ["search", "--spec", json.dumps(SEARCH), "--journal", str(journal), "--collect",
            "--best", str(tmp / "best.json"), *extra]


def corrupt_middle(tmp: Path) -> Path:
    journal = study(tmp, ["complete", "complete"])
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:12] + b"\n"
    journal.write_bytes(b"".join(lines))
    return journal


def worker_file(tmp: Path, text: str) -> list[str]:
    return collect_argv(tmp, study(tmp, ["complete", "complete"]), "--worker-files", str(written(tmp / "0.json", text)))


cli_case("journal-corrupt-line", "journal", "a study journal with a corrupt record in the middle",
         lambda t, d: collect_argv(t, corrupt_middle(t)), "study journal {tmp}/study.journal: line 2", "head -n 1")
cli_case("journal-missing", "journal", "collecting a study whose journal does not exist",
         lambda t, d: collect_argv(t, t / "none.journal"), "no study journal at {tmp}/none.journal")
cli_case("journal-short", "journal", "collecting a study with fewer finished trials than its budget",
         lambda t, d: collect_argv(t, study(t, ["complete"])), "study {tmp}/study.journal holds 1 finished trials",
         "budget is 2")
cli_case("study-all-diverged", "journal", "a study whose every trial diverged",
         lambda t, d: collect_argv(t, study(t, ["diverged", "diverged"])), "study {tmp}/study.journal",
         "every one of its 2 trials diverged")
cli_case("study-none-complete", "journal", "a study whose every trial was pruned",
         lambda t, d: collect_argv(t, study(t, ["pruned", "diverged"])), "study {tmp}/study.journal",
         "no trial completed (1 diverged, 1 pruned")
def other_study(tmp: Path) -> Path:
    """A journal of the same algorithm with another search space."""
    journal = tmp / "study.journal"
    other = {**SEARCH, "space": {"lr": {"type": "float", "low": 1e-2, "high": 1e-1, "log": True}}}
    s = studies.make_study(other, journal)
    studies.check_identity(s, other, journal, "digits")
    for _ in range(2):
        s.tell(s.ask(), 90.0)
    return journal


cli_case("journal-other-study", "journal", "collecting a journal made for another search space",
         lambda t, d: collect_argv(t, other_study(t)), "study journal {tmp}/study.journal belongs to another study",
         "its space is")
cli_case("journal-other-dataset", "journal", "searching with a journal made on another dataset",
         lambda t, d: ["search", "--spec", json.dumps(SEARCH), "--data", str(d), "--journal",
                       str(dataset_study(t)), "--best", str(t / "best.json")],
         "study journal {tmp}/study.journal belongs to a study on mnist")


def dataset_study(tmp: Path) -> Path:
    journal = tmp / "study.journal"
    s = studies.make_study(SEARCH, journal)
    studies.check_identity(s, SEARCH, journal, "mnist")
    return journal


cli_case("worker-file-truncated", "result", "a truncated search worker file",
         lambda t, d: worker_file(t, '{"worker": 0, "fin'), "search worker file {tmp}/0.json is truncated")
cli_case("worker-file-incomplete", "result", "a search worker file without its trials",
         lambda t, d: worker_file(t, '{"worker": 0}'), "search worker file {tmp}/0.json lacks workers")

cli_case("settings-entry-name", "cli", "`bpfree settings fwdgrad-weight` (a config entry's name, not an `impl`)",
         lambda t, d: ["settings", "fwdgrad-weight"], "did you mean 'fwdgrad'?")
cli_case("spec-not-json", "cli", "`--spec '{bad'`", lambda t, d: [*train_argv(t, d)[:2], "{bad", *train_argv(t, d)[3:]],
         "--spec = '{bad'", "not JSON")
cli_case("spec-file-missing", "cli", "`--spec @FILE` naming no file",
         lambda t, d: ["search", "--spec", f"@{t}/spec.json", "--journal", str(t / "j")],
         "--spec file {tmp}/spec.json does not exist")
cli_case("spec-incomplete", "cli", "a `--spec` without the search's keys", lambda t, d: [
         "search", "--spec", json.dumps(TRAIN), "--data", str(d), "--journal", str(t / "j")],
         "--spec lacks space, search")
cli_case("spec-unknown-setting", "cli", "a `--spec` whose fixed settings hold a misspelt key", lambda t, d: [
         "search", "--spec", json.dumps({**SEARCH, "fixed": {"batch_sise": 6}}), "--data", str(d), "--journal",
         str(t / "j"), "--threads", "1"], "--spec algorithms.bp.fixed.batch_sise")
cli_case("spec-algorithm-on-wrong-architecture", "cli", "a `--spec` running mf on a CNN", lambda t, d: [
         "search", "--spec",
         json.dumps({**config.search_spec(CFG, "tiny", "mf"), "arch": {"type": "cnn", "channels": [4]}}),
         "--data", str(d), "--journal", str(t / "j")], "--spec: algorithm mf on architecture tiny", "'cnn'")
cli_case("worker-out-of-range", "cli", "`--worker 5 --workers 2`", lambda t, d: [
         "search", "--spec", json.dumps(SEARCH), "--data", str(d), "--journal", str(t / "j"), "--worker", "5",
         "--workers", "2"], "--worker 5 is not in 0..1")
cli_case("search-without-data", "cli", "`bpfree search` without `--data`", lambda t, d: [
         "search", "--spec", json.dumps(SEARCH), "--journal", str(t / "j")], "--data is required")
cli_case("checkpoint-interval-env", "cli", "`BPFREE_CHECKPOINT_EVERY=ten`", lambda t, d: train_argv(t, d)[:-2],
         "BPFREE_CHECKPOINT_EVERY = 'ten'", env={"BPFREE_CHECKPOINT_EVERY": "ten"})
cli_case("gpu-slots-env", "cli", "`BPFREE_GPU_SLOTS=0`", lambda t, d: train_argv(t, d), "BPFREE_GPU_SLOTS = '0'",
         env={"BPFREE_GPU_SLOTS": "0"})
cli_case("metered-lock-dir-unusable", "cli", "`BPFREE_METERED_LOCK_DIR=/dev/null/locks` (no folder can be made there)",
         lambda t, d: train_argv(t, d), "cannot lock in /dev/null/locks (", "BPFREE_METERED_LOCK_DIR",
         env={"BPFREE_METERED_LOCK_DIR": "/dev/null/locks"})
cli_case("spec-without-config", "cli", "`bpfree train` with neither `--spec` nor `--config`", lambda t, d: [
         "train", "--data", str(d), "--best", "b.json", "--seed", "0", "--out-dir", str(t)], "give --spec, or --config")
cli_case("spec-unknown-architecture", "cli", "`bpfree spec --architecture` naming none of the config's",
         lambda t, d: ["spec", "--config", str(written(t / "c.yaml", yaml.safe_dump(DEFAULT))), "--architecture",
                       "mlp-9x9", "--algorithm", "bp"], "architecture 'mlp-9x9' is not defined under architectures")
cli_case("train-unknown-algorithm", "cli", "`bpfree train --config --algorithm` naming none of the config's",
         lambda t, d: ["train", "--config", str(written(t / "c.yaml", yaml.safe_dump(DEFAULT))), "--architecture",
                       "mlp-2x256", "--algorithm", "bpp", "--data", str(d), "--best", "b.json", "--seed", "0",
                       "--out-dir", str(t)], "algorithm 'bpp' is not defined under algorithms")
cli_case("config-arg-missing-file", "cli", "`bpfree spec --config` naming no file", lambda t, d: [
         "spec", "--config", str(t / "none.yaml"), "--architecture", "a", "--algorithm", "b"],
         "cannot read config file {tmp}/none.yaml")


def disk_full_case(id: str, what: str, argv: Callable[[Path, Path], list[str]], fail: str, *needles: str) -> None:
    """`bpfree argv` on a disk that fills when `fail` (a dotted attribute: a write of bpfree's or of
    the standard library) is called: refused by name, and no temporary file left anywhere."""
    def run(tmp: Path, digits: Path) -> str:
        args = argv(tmp, digits)
        before = {f for f in tmp.rglob("*") if f.is_file()}

        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fail, full)
            message = refused(args)
        left = [f for f in tmp.rglob("*") if f.is_file() and f not in before and ".tmp" in f.name]
        assert not left, f"{id}: temporary files left: {left}"
        return message

    CASES.append(Case(id, "disk", what, run, needles))


disk_full_case("disk-full-final-run", "a disk that fills as a final run writes its results",
               lambda t, d: train_argv(t, d), "pathlib.Path.write_text", "cannot write {tmp}/run/epochs.csv",
               "No space left on device")
disk_full_case("disk-full-report", "a disk that fills as the report writes its tables",
               lambda t, d: report_argv(t, run_folder(t, "epoch,val_acc,seconds\n1,90,1\n2,91,1\n3,92,1\n")),
               "pathlib.Path.write_text", "cannot write {tmp}/out/", "No space left on device")
disk_full_case("disk-full-journal", "a disk that fills as a search appends to its study journal",
               lambda t, d: ["search", "--spec", json.dumps(SEARCH), "--data", str(d), "--journal",
                             str(t / "study.journal"), "--best", str(t / "best.json")],
               "bpfree.search.os.fsync", "cannot write the study journal {tmp}/study.journal",
               "No space left on device")
cli_case("journal-is-folder", "journal", "a study journal path that is a folder",
         lambda t, d: (t / "study.journal").mkdir() or ["search", "--spec", json.dumps(SEARCH), "--data", str(d),
                                                        "--journal", str(t / "study.journal")],
         "the output {tmp}/study.journal is a folder")


# ---- checkpoints: a bad one is refused (ignored, and the log says why); the run starts afresh -----

def checkpoint_case(id: str, what: str, content: Callable[[Path, Path], bytes], *needles: str) -> None:
    def run(tmp: Path, digits: Path) -> str:
        out = tmp / "run"
        written(out / "checkpoint.pt", content(tmp, digits))
        # a rate at which one epoch learns: a run at chance is refused as diverged (train.learned_nothing)
        best = written(tmp / "best.json", json.dumps({"params": {**PARAMS, "lr": 3e-2}}))
        argv = train_argv(tmp, digits, best=best, out=out)
        argv[-1] = "0"  # checkpointing on: the rerun looks for a checkpoint
        err = _io.StringIO()
        with contextlib.redirect_stderr(err):
            cli.main(argv)
        assert (out / "metrics.json").exists() and not (out / "checkpoint.pt").exists()
        return next(line.split("] ", 1)[1] for line in err.getvalue().splitlines() if "ignoring" in line)

    CASES.append(Case(id, "checkpoint", what, run, needles))


def foreign_checkpoint(tmp: Path, digits: Path) -> bytes:
    buf = _io.BytesIO()
    torch.save({"format": 1, "key": "another run", "result": {"epochs": 3}, "stage": 0, "extra": {}}, buf)
    return buf.getvalue()


checkpoint_case("checkpoint-truncated", "a truncated checkpoint.pt beside a rerun",
                lambda t, d: foreign_checkpoint(t, d)[:40], "ignoring unreadable checkpoint {tmp}/run/checkpoint.pt")
checkpoint_case("checkpoint-other-run", "a checkpoint.pt of another configuration or code version",
                foreign_checkpoint, "ignoring checkpoint {tmp}/run/checkpoint.pt", "another configuration")


# ---- the tests ---------------------------------------------------------------------------------

def test_corpus_is_large_and_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 50 and len(set(ids)) == len(ids)
    assert sum(c.kind == "snakemake" for c in CASES) >= 3


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_by_name(case, tmp_path, digits_path):
    message = case.run(tmp_path, digits_path)
    for needle in case.needles:
        assert needle.replace("{tmp}", str(tmp_path)) in message, (case.id, message)


def test_docs_list_every_case_with_its_message_of_today():
    """docs/errors.md is the corpus's output, not a copy that drifts (a new algorithm changes the
    list in `unknown-impl`'s message, for one)."""
    doc = (ROOT / "docs" / "errors.md").read_text()
    missing = [c.id for c in CASES if f"| `{c.id}` |" not in doc]
    assert not missing, f"docs/errors.md lacks {missing}: regenerate it (see this file's docstring)"
    assert doc == markdown(), "docs/errors.md differs from the corpus's messages: regenerate it"


def markdown() -> str:
    """docs/errors.md: every case with the message it gets (paths shown as <tmp>)."""
    from bpfree.datasets import prepare

    rows = []
    with tempfile.TemporaryDirectory() as d:
        digits = Path(d) / "digits.pt"
        prepare("digits", None, digits)
        for case in CASES:
            tmp = Path(tempfile.mkdtemp(dir=d))
            with contextlib.redirect_stdout(_io.StringIO()):  # what a case's command prints is not the doc
                message = case.run(tmp, digits).replace(str(tmp), "<tmp>").replace("|", "\\|")
            rows.append(f"| `{case.id}` | {case.kind} | {case.what.replace('|', '/')} | {message} |")
    return "\n".join([
        "# Errors: what bpfree refuses, and the message it gives",
        "",
        "Every known failure names the key or the file at fault (and the value). A config key is refused",
        "before any job runs (by the config check that `snakemake` and `bpfree spec|search|train --config` "
        "run); a data file,",
        "result file, journal or argument by the `bpfree` command that reads it, as one line",
        "`bpfree <command>: error: <message>` with exit status 2. A file named by `snakemake --configfile` is",
        "read while the workflow's profile is (before Snakemake reads it), so a missing file, a YAML error",
        "(with its line and column) or a key given twice is one line too. A write that fails (a full disk, a",
        "folder in the way) names the file and leaves no temporary file; what was finished before stays. A",
        "bad checkpoint is ignored, and the log says why. Find your message below to see which input causes it.",
        "",
        "This table is generated from the test corpus `tests/test_bad_inputs.py` (each row is a test);",
        "regenerate it with `.venv/bin/python tests/test_bad_inputs.py docs/errors.md`. `<tmp>` stands for",
        "the folder of the file concerned. Suspicious but legal inputs (a batch larger than the training split,",
        "`limit_train` below 1000 examples or 10 per class) are not refused: a `warning:` line in the job's",
        "log names them.",
        "",
        "| case | kind | input | message |",
        "| --- | --- | --- | --- |",
        *rows, ""])


if __name__ == "__main__":
    torch.set_num_threads(1)
    Path(sys.argv[1]).write_text(markdown())
