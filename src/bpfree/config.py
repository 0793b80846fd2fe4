"""Configuration: schema validation, the checks a schema cannot express, and the per-job specs.

A *spec* is the JSON-able slice of the configuration that decides one job's result. The workflow
passes it to the job through `params:`, so editing a value reruns exactly the jobs whose spec
changed, and the `bpfree` command line takes the same spec without Snakemake.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bpfree import hparams, io, sources
from bpfree.errors import ConfigError  # noqa: F401 - raised by every check here; callers import it from config
from bpfree.errors import FileError
from bpfree.hparams import PROTOCOL_KEYS  # noqa: F401 - settings only `protocol` may hold
from bpfree import schema
from bpfree.protocol import MeteringConfig, SearchConfig
from bpfree.schema import SCHEMA  # the schema's path, defaults and errors live there (no torch)

# Keys that moved: (old path, new path). A config that still has one is refused with the new place.
MOVED = ((("protocol", "metering", "target_fraction"), ("protocol", "statistics", "target_fraction")),)


def load(path: str | Path) -> dict:
    """Read, validate (filling schema defaults) and check a config file."""
    cfg = io.read_yaml(path)
    validate(cfg)
    return cfg


def check_files(paths: list[str | Path] | None = None) -> None:
    """Read each config file strictly (io.read_yaml); on a missing, empty, non-YAML one, one that
    is not a mapping, or one with a key given twice, print one line naming it and exit with status
    2. `paths`: by default the `--configfile(s)` of this process's snakemake command line. Snakemake reads those before
    the Snakefile, with a traceback for a missing file and no line number for a syntax error, so
    the workflow's profiles call this while they are parsed (a yte definition); the Snakefile calls
    it too, for a duplicate key under any profile."""
    if paths is None:
        paths, taking = [], False
        for arg in sys.argv[1:]:
            option, eq, value = arg.partition("=")
            if option in ("--configfile", "--configfiles"):
                paths, taking = paths + ([value] if eq else []), not eq
            elif arg.startswith("-"):
                taking = False
            elif taking:
                paths.append(arg)
    for path in paths:
        try:
            if not isinstance(io.read_yaml(path), dict):
                raise FileError(f"config file {path} is not a mapping of keys (datasets, architectures, ...)")
        except FileError as e:
            sys.stderr.write(f"bpfree: the config is refused: {e}\n")
            raise SystemExit(2) from None


def validate(cfg: dict, device: bool = True, base: Path | None = None, data: bool = True) -> None:
    """Schema validation with defaults filled in (Snakemake's validator), then `check` (`device`:
    whether this machine must offer the config's device; `data`: whether data_root must hold the
    datasets here; `base`: the folder a relative data_root is taken from); ConfigError names the
    first bad key."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as sm_validate

    if not isinstance(cfg, dict):
        raise ConfigError(f"a config is a mapping of keys (datasets, architectures, ...), not {type(cfg).__name__}")
    refuse_moved(cfg)
    try:
        sm_validate(cfg, str(SCHEMA))
    except WorkflowError as e:
        raise ConfigError(_schema_error(cfg) or str(e)) from None
    check(cfg, device=device, base=base, data=data)


def refuse_moved(cfg: dict) -> None:
    """ConfigError if `cfg` holds a key at a place it moved from (MOVED), naming where it is now."""
    for old, new in MOVED:
        node = cfg
        for k in old[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and old[-1] in node:
            raise ConfigError(f"{'.'.join(old)} has moved to {'.'.join(new)}: move the key there "
                              "(its meaning and default are unchanged)")


def _schema_error(cfg: dict) -> str | None:
    """The schema's most relevant complaint as one line with its key path (Snakemake's is a page
    that dumps the schema and does not name the path)."""
    return schema.first_error(cfg)


def check(cfg: dict, device: bool = True, base: Path | None = None, data: bool = True) -> None:
    """What the schema cannot express: cross-references, every algorithm's settings against its
    declaration (bpfree.hparams), architectures the algorithms can run on, and values that must
    name something real on this machine (data_root's folders, a relative data_root taken from
    `base`, by default the checkout the package runs from, else the current folder; `device`,
    unless `device` is False: a cluster's submit host need not have the compute nodes' GPUs; the
    data's folders, unless `data` is False: a report rebuilt from committed results needs no data)."""
    from bpfree import algorithms, models  # torch: only where a config or a spec's declaration is checked
    from bpfree.algorithms.base import check_architecture

    algos, archs = cfg["algorithms"], cfg["architectures"]
    _check_datasets(cfg, base or sources.checkout() or Path.cwd(), data)
    for name, arch in archs.items():
        try:
            models.check(arch)  # the type's record in models.REGISTRY
        except ValueError as e:
            raise ConfigError(f"architectures.{name}: {e}") from None
    classes = {}
    searched = cfg["protocol"]["search"]["n_trials"] > 0
    for name, entry in algos.items():
        key = f"algorithms.{name}"
        try:
            classes[name] = algorithms.get(entry["impl"])
        except ValueError as e:
            raise ConfigError(f"{key}.impl = {entry['impl']!r}: {e}") from None
        hparams.check_entry(classes[name].Settings, entry, key, searched)
        if searched and not entry.get("space"):
            raise ConfigError(f"{key}.space is empty but protocol.search.n_trials = "
                              f"{cfg['protocol']['search']['n_trials']}: give it a search space")
    for i, comp in enumerate(cfg["comparisons"]):
        arch = comp["architecture"]
        if arch not in archs:
            raise ConfigError(f"comparisons[{i}].architecture = {arch!r}: not defined "
                              f"under architectures ({', '.join(archs)})")
        for a in comp["algorithms"]:
            if a not in algos:
                raise ConfigError(f"comparisons[{i}].algorithms: unknown algorithm {a!r}; defined: "
                                  f"{', '.join(algos)}")
            check_architecture(classes[a], archs[arch], f"comparisons[{i}]: algorithm {a} on architecture {arch}")
        for d in comp.get("datasets", []):
            if d not in cfg["datasets"]:
                raise ConfigError(f"comparisons[{i}].datasets: {d!r} is not in datasets {cfg['datasets']}")
    _check_search_fidelity(cfg)
    MeteringConfig.from_dict(cfg["protocol"]["metering"])  # e.g. a country CodeCarbon does not know
    from bpfree.stats import StatsConfig  # scipy and statsmodels: only where the config is checked

    try:
        StatsConfig.from_dict(cfg["protocol"].get("statistics"))  # e.g. a margin of no compared metric
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if device:
        from bpfree.device import check_device  # imports torch: only where the device is checked

        check_device(cfg.get("device", "auto"), "device")


def _check_search_fidelity(cfg: dict) -> None:
    """A search subset cannot be larger than the split the final runs train on."""
    n, full = SearchConfig.from_dict(cfg["protocol"]["search"]).limit_train, cfg.get("limit_train")
    if n is not None and full is not None and n > full:
        raise ConfigError(f"protocol.search.limit_train = {n} is larger than limit_train = {full}: search trials "
                          "train on a subset of the final runs' split")


def _check_datasets(cfg: dict, base: Path, data: bool = True) -> None:
    """Every dataset is in the registry (bpfree.datasets.REGISTRY); data_root holds the folders of
    those that are read from files (unless `data` is False)."""
    from bpfree.datasets import REGISTRY

    for i, d in enumerate(cfg["datasets"]):
        if d not in REGISTRY:
            raise ConfigError(f"datasets[{i}] = {d!r}: unknown dataset; known: {', '.join(REGISTRY)}")
    if not data:
        return
    needed = [REGISTRY[d] for d in cfg["datasets"] if REGISTRY[d].folder is not None]
    root = cfg.get("data_root")
    if root is None:
        if needed:
            built_in = ", ".join(n for n, d in REGISTRY.items() if d.folder is None)
            raise ConfigError(f"data_root = null but datasets = {cfg['datasets']}: only {built_in} is built in; "
                              "set data_root to the folder with MNIST/, FashionMNIST/, ...")
        return
    where = base / root
    if not where.is_dir():
        raise ConfigError(f"data_root = {root!r}: no such folder ({where})")
    for ds in needed:
        if not (where / ds.folder).is_dir():
            raise ConfigError(f"data_root = {root!r}: dataset {ds.name} needs the folder {where / ds.folder} "
                              "(torchvision's layout)")


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
    """Everything besides data, hyperparameters and seed that decides a training run's result.
    ConfigError when the config defines no such architecture or algorithm."""
    for what, name in (("architectures", architecture), ("algorithms", algorithm)):
        if name not in cfg[what]:
            raise ConfigError(f"{what[:-1]} {name!r} is not defined under {what} ({', '.join(cfg[what])})")
    entry = cfg["algorithms"][algorithm]
    proto = cfg["protocol"]
    return {"algorithm": algorithm, "impl": entry["impl"], "architecture": architecture,
            "arch": cfg["architectures"][architecture], "fixed": entry.get("fixed", {}),
            "stopping": proto["stopping"], "limit_train": cfg.get("limit_train"),
            "flush_denormal": cfg.get("flush_denormal", True),
            "device": cfg.get("device", "auto"), "metering": proto.get("metering", {})}


def search_spec(cfg: dict, architecture: str, algorithm: str) -> dict:
    """Everything that decides a study's result (metering does not)."""
    spec = train_spec(cfg, architecture, algorithm)
    spec.pop("metering")
    entry = cfg["algorithms"][algorithm]
    search = dict(cfg["protocol"]["search"])
    search.pop("workers", None)  # how many processes share a study does not change its budget
    for key in ("limit_train", "limit_val"):  # absent and null are the same fidelity (and the same study key)
        if search.get(key) is None:
            search.pop(key, None)
    return {**spec, "space": entry.get("space", {}), "search": search}


SPEC_KEYS = {"train": ("algorithm", "impl", "architecture", "arch", "fixed", "stopping", "device", "metering"),
             "search": ("algorithm", "impl", "architecture", "arch", "fixed", "stopping", "device", "space",
                        "search")}


def check_spec(spec: dict, kind: str, declared: bool = True) -> dict:
    """`spec` if it has the keys a `kind` job reads (as `train_spec`/`search_spec` make them), else
    ConfigError naming the missing ones (a spec written by hand, or for the other kind of job).
    A search spec's algorithm, architecture and settings are also checked against the algorithm's
    declaration, unless `declared` is False (the collect step: its workers checked the same spec,
    and it need not import torch)."""
    missing = [k for k in SPEC_KEYS[kind] if k not in spec]
    if kind == "search" and isinstance(spec.get("search"), dict) and "n_trials" not in spec["search"]:
        missing.append("search.n_trials")
    if missing:
        raise ConfigError(f"--spec lacks {', '.join(missing)}: print a {kind} job's spec with "
                          f"`bpfree spec --kind {kind} --config FILE --architecture A --algorithm X`")
    if kind == "search" and declared:  # before the first trial, as the config check would
        from bpfree import algorithms
        from bpfree.algorithms.base import check_architecture

        key = f"--spec algorithms.{spec['algorithm']}"
        try:
            cls = algorithms.get(spec["impl"])
        except ValueError as e:
            raise ConfigError(f"{key}.impl = {spec['impl']!r}: {e}") from None
        check_architecture(cls, spec["arch"], f"--spec: algorithm {spec['algorithm']} on architecture "
                                              f"{spec['architecture']}")
        hparams.check_entry(cls.Settings, spec, key, spec["search"]["n_trials"] > 0)
    return spec


def dumps(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))
