"""The source files a job's result depends on: one list, used by the workflow (its jobs' inputs and
the study key, so editing one reruns the jobs) and by the package (the checkpoint key, so a
checkpoint of other code is not resumed; the provenance of every best.json and metrics.json)."""
from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

# Besides the algorithm's own module: the engine every algorithm runs through and what it reads.
CORE = ("engine.py", "models.py", "data.py", "checkpoint.py", "hparams.py", "errors.py", "algorithms/base.py")


def core(package: str | Path = PACKAGE) -> list[Path]:
    """The core files of the package at `package` (the workflow passes its own checkout's)."""
    return [Path(package) / f for f in CORE]


def files(impl: str) -> list[Path]:
    """The algorithm `impl`'s module (shipped or not, tracked by git or not) and the core files."""
    from bpfree import algorithms

    return [algorithms.source_file(impl), *core()]


def _name(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(PACKAGE.parent)) if path.is_relative_to(PACKAGE.parent) else str(path)


def hashes(impl: str | None, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """{file: sha256 of its bytes} of `files(impl)` plus the package modules named in `extra`
    (e.g. the stage's own module); file names are relative to the package's parent folder
    (bpfree/engine.py) or absolute for a module outside the package."""
    paths = (files(impl) if impl else core()) + [PACKAGE / f for f in extra]
    return {_name(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
