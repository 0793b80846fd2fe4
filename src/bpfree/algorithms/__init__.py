"""Algorithm registry: `impl` names a module in this package (or a dotted path to any module)
whose `ALGORITHM` attribute is a subclass of `bpfree.algorithms.base.Algorithm`."""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bpfree.algorithms.base import Algorithm

HERE = Path(__file__).parent


def module_name(impl: str) -> str:
    """The module of `impl`; ValueError if it cannot name one (empty, relative, a path)."""
    if not isinstance(impl, str) or not all(part.isidentifier() for part in impl.split(".")):
        raise ValueError(f"{impl!r} is not a module name: give a shipped implementation "
                         f"({', '.join(available())}) or an absolute dotted path such as mypackage.myalgo")
    return impl if "." in impl else f"bpfree.algorithms.{impl}"


def available() -> list[str]:
    """Algorithm implementations shipped in this package."""
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("__init__", "base"))


def get(impl: str) -> type[Algorithm]:
    """The `ALGORITHM` class of `impl` (imports torch; the registry's other functions read files and
    do not); ValueError naming what is wrong."""
    from bpfree.algorithms.base import Algorithm

    try:
        mod = importlib.import_module(module_name(impl))
    except (ModuleNotFoundError, ValueError) as e:
        stem = impl.split("-")[0] if isinstance(impl, str) else impl
        if stem != impl and stem in available():  # a config entry's name, e.g. fwdgrad-weight
            raise ValueError(f"{impl!r} is not an implementation but reads like a config entry's name: "
                             f"did you mean {stem!r}? (an entry's `impl`)") from None
        if isinstance(e, ValueError):  # not a module name
            raise
        raise ValueError(f"unknown algorithm implementation {impl!r} ({e}); "
                         f"shipped: {', '.join(available())}") from e
    cls = getattr(mod, "ALGORITHM", None)
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise ValueError(f"module {mod.__name__} has no ALGORITHM subclass of bpfree Algorithm")
    return cls


def source_file(impl: str) -> Path:
    """The file that implements `impl` (declared as an input of its jobs so edits rerun them)."""
    try:
        spec = importlib.util.find_spec(module_name(impl))
    except ModuleNotFoundError:  # a dotted path whose package is missing
        spec = None
    if spec is None or spec.origin is None:
        raise ValueError(f"unknown algorithm implementation {impl!r}; shipped: {', '.join(available())}")
    return Path(spec.origin)


def with_imports(path: str | Path) -> list[Path]:
    """The algorithm file at `path`, then the modules of this package beside it that it imports,
    directly or through each other (cafo runs dfa's DFA code, fa and dfa build on bp), but
    `base` (an input of every job already): editing any of them reruns the jobs that run it."""
    out, todo = [], [Path(path)]
    while todo:
        p = todo.pop(0)
        if p in out:
            continue
        out.append(p)
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == __name__:
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(__name__ + "."):
                names = [node.module.rsplit(".", 1)[1]]
            elif isinstance(node, ast.Import):
                names = [a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith(__name__ + ".")]
            else:
                continue
            todo += [p.parent / f"{n}.py" for n in names if n != "base" and (p.parent / f"{n}.py").exists()]
    return out
