"""Configuration: schema validation, the checks a schema cannot express, and the per-job specs.

A *spec* is the JSON-able slice of the configuration that decides one job's result. The workflow
passes it to the job through `params:`, so editing a value reruns exactly the jobs whose spec
changed, and the `bpfree` command line takes the same spec without Snakemake.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from bpfree import algorithms

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the value."""


def load(path: str | Path) -> dict:
    """Read, validate (filling schema defaults) and check a config file."""
    with open(path) as f:
        cfg = yaml.safe_load(f)
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    """Schema validation with defaults filled in (Snakemake's validator), then `check`."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as sm_validate

    try:
        sm_validate(cfg, str(SCHEMA))
    except WorkflowError as e:
        raise ConfigError(str(e)) from e
    check(cfg)


# Settings only `protocol` may hold: an algorithm entry naming one would break the fair comparison.
PROTOCOL_KEYS = {"seed", "seeds", "stopping", "max_epochs", "patience", "min_delta", "n_trials", "sampler_seed",
                 "pruner", "split", "limit_train"}


def _is_lr(name: str) -> bool:
    return name == "lr" or name.endswith("_lr") or name.startswith("lr_")


def check(cfg: dict) -> None:
    """Cross-references and bounds that the schema cannot express."""
    algos, archs = cfg["algorithms"], cfg["architectures"]
    for name, arch in archs.items():
        need = {"mlp": "widths", "cnn": "channels"}[arch["type"]]
        if need not in arch:
            raise ConfigError(f"architectures.{name}: type {arch['type']} needs `{need}`")
    for i, comp in enumerate(cfg["comparisons"]):
        if comp["architecture"] not in archs:
            raise ConfigError(f"comparisons[{i}].architecture = {comp['architecture']!r}: not defined "
                              f"under architectures ({', '.join(archs)})")
        for a in comp["algorithms"]:
            if a not in algos:
                raise ConfigError(f"comparisons[{i}].algorithms: unknown algorithm {a!r}; defined: "
                                  f"{', '.join(algos)}")
        for d in comp.get("datasets", []):
            if d not in cfg["datasets"]:
                raise ConfigError(f"comparisons[{i}].datasets: {d!r} is not in datasets {cfg['datasets']}")
    for name, entry in algos.items():
        key = f"algorithms.{name}"
        for p in sorted(PROTOCOL_KEYS & {*entry.get("fixed", {}), *entry.get("space", {})}):
            raise ConfigError(f"{key}: {p!r} belongs under protocol (the same for every algorithm), "
                              "not to one algorithm's fixed settings or search space")
        try:
            algorithms.source_file(entry["impl"])
        except ValueError as e:
            raise ConfigError(f"{key}.impl = {entry['impl']!r}: {e}") from e
        for p, space in entry.get("space", {}).items():
            _check_param(f"{key}.space.{p}", p, space)
        for p, v in entry.get("fixed", {}).items():
            if _is_lr(p) and isinstance(v, (int, float)) and v <= 0:
                raise ConfigError(f"{key}.fixed.{p} = {v}: a learning rate must be > 0")
        if cfg["protocol"]["search"]["n_trials"] > 0 and not entry.get("space"):
            raise ConfigError(f"{key}.space is empty but protocol.search.n_trials = "
                              f"{cfg['protocol']['search']['n_trials']}: give it a search space")
    if cfg.get("data_root") is None and any(d != "digits" for d in cfg["datasets"]):
        raise ConfigError(f"data_root = null but datasets = {cfg['datasets']}: only digits is built in; "
                          "set data_root to the folder with MNIST/, FashionMNIST/, ...")


def _check_param(key: str, name: str, p: dict) -> None:
    kind = p.get("type", "float")
    if kind == "categorical":
        if "choices" not in p:
            raise ConfigError(f"{key}: a categorical parameter needs `choices`")
        return
    for bound in ("low", "high"):
        if bound not in p:
            raise ConfigError(f"{key}: a {kind} parameter needs `{bound}`")
    if p["low"] > p["high"]:
        raise ConfigError(f"{key}.low = {p['low']} is above {key}.high = {p['high']}")
    for bound in ("low", "high"):
        v = p[bound]
        if _is_lr(name) and v <= 0:
            raise ConfigError(f"{key}.{bound} = {v}: a learning-rate bound must be > 0")
        if p.get("log") and v <= 0:
            raise ConfigError(f"{key}.{bound} = {v}: a log-scale bound must be > 0")


# ---- what the workflow runs ---------------------------------------------------------------------

def cells(cfg: dict) -> list[tuple[str, str, str]]:
    """Every (dataset, architecture, algorithm) the config compares, in a stable order."""
    out: list[tuple[str, str, str]] = []
    for comp in cfg["comparisons"]:
        for d in comp.get("datasets") or cfg["datasets"]:
            for a in comp["algorithms"]:
                cell = (d, comp["architecture"], a)
                if cell not in out:
                    out.append(cell)
    return out


def train_spec(cfg: dict, architecture: str, algorithm: str) -> dict:
    """Everything besides data, hyperparameters and seed that decides a training run's result."""
    entry = cfg["algorithms"][algorithm]
    proto = cfg["protocol"]
    return {"algorithm": algorithm, "impl": entry["impl"], "architecture": architecture,
            "arch": cfg["architectures"][architecture], "fixed": entry.get("fixed", {}),
            "stopping": proto["stopping"], "limit_train": cfg.get("limit_train"),
            "device": cfg.get("device", "auto"),
            # target_fraction only changes the report: keep it out of the spec so editing it reruns no run
            "metering": {k: v for k, v in proto.get("metering", {}).items() if k != "target_fraction"}}


def search_spec(cfg: dict, architecture: str, algorithm: str) -> dict:
    """Everything that decides a study's result (metering does not)."""
    spec = train_spec(cfg, architecture, algorithm)
    spec.pop("metering")
    entry = cfg["algorithms"][algorithm]
    search = dict(cfg["protocol"]["search"])
    search.pop("workers", None)  # how many processes share a study does not change its budget
    return {**spec, "space": entry.get("space", {}), "search": search}


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def dumps(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))
