"""The source files a job's result depends on: one list, used by the workflow (its jobs' inputs and
the study key, so editing one reruns the jobs) and by the package (the checkpoint key, so a
checkpoint of other code is not resumed; the provenance of every best.json and metrics.json).
Also the one hash function (`digest`) of specs, checkpoints, study keys and files."""
from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def checkout() -> Path | None:
    """The repository this package runs from (src/bpfree of a checkout: an editable install or
    PYTHONPATH=src); None for an installed copy (`pip install .`), whose code no checkout describes."""
    root = PACKAGE.parents[1]
    return root if (root / "Snakefile").is_file() else None


def git(*args: str) -> str | None:
    """The output of `git ARGS` in `checkout()`; None for an installed copy (one inside a checkout's
    .venv must not report that checkout's commit) or where git fails."""
    root = checkout()
    if root is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None

# Besides the algorithm's own module: the engine every algorithm runs through and what it reads.
CORE = ("engine.py", "models.py", "data.py", "checkpoint.py", "hparams.py", "errors.py", "algorithms/base.py")


def digest(obj: object = None, files: Iterable[str | Path] = (), length: int = 64) -> str:
    """sha256, as the first `length` hex digits, of `obj` as JSON (keys sorted; a value JSON cannot
    hold is written as its str) followed by the bytes of `files` in their order; `obj` None: the
    files alone. The study key (the workflow's journal names), the checkpoint key, the provenance's
    spec_sha256 and run_sha256 and the per-file hashes are all this function, so a persisted value
    (a journal to resume, a checkpoint) keeps its name across versions of the code that computes it."""
    h = hashlib.sha256()
    if obj is not None:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:length]


def study_key(spec: dict, files: Iterable[str | Path]) -> str:
    """The 12-digit key of an Optuna study (`study-<key>.journal`): its search spec and the bytes of
    the code it runs (the algorithm's modules, then the core files)."""
    return digest({"spec": spec, "code": digest(files=files)}, length=12)


def core(package: str | Path = PACKAGE) -> list[Path]:
    """The core files of the package at `package` (the workflow passes its own checkout's)."""
    return [Path(package) / f for f in CORE]


def package_modules(sub: str, package: str | Path = PACKAGE) -> list[Path]:
    """The modules of the subpackage `sub` (e.g. "metering") of the package at `package`, sorted: a
    job that runs it depends on every one (the workflow passes its own checkout's)."""
    return sorted((Path(package) / sub).glob("*.py"))


def files(impl: str) -> list[Path]:
    """The algorithm `impl`'s module (shipped or not, tracked by git or not), the package's
    algorithm modules it imports (`algorithms.with_imports`: cafo runs dfa's code) and the core
    files: the same list the workflow declares as the job's inputs."""
    from bpfree import algorithms

    return [*algorithms.with_imports(algorithms.source_file(impl)), *core()]


def _name(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(PACKAGE.parent)) if path.is_relative_to(PACKAGE.parent) else str(path)


def hashes(impl: str | None, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """{file: sha256 of its bytes} of `files(impl)` plus the package modules named in `extra`
    (e.g. the stage's own module); file names are relative to the package's parent folder
    (bpfree/engine.py) or absolute for a module outside the package."""
    paths = (files(impl) if impl else core()) + [PACKAGE / f for f in extra]
    return {_name(p): digest(files=[p]) for p in paths}
