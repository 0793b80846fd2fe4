"""Algorithm registry: `impl` names a module in this package (or a dotted path to any module)
whose `ALGORITHM` attribute is a subclass of `bpfree.algorithms.base.Algorithm`."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from bpfree.algorithms.base import Algorithm

HERE = Path(__file__).parent


def module_name(impl: str) -> str:
    return impl if "." in impl else f"bpfree.algorithms.{impl}"


def available() -> list[str]:
    """Algorithm implementations shipped in this package."""
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("__init__", "base"))


def get(impl: str) -> type[Algorithm]:
    try:
        mod = importlib.import_module(module_name(impl))
    except ModuleNotFoundError as e:
        raise ValueError(f"unknown algorithm implementation {impl!r} ({e}); "
                         f"shipped: {', '.join(available())}") from e
    cls = getattr(mod, "ALGORITHM", None)
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise ValueError(f"module {mod.__name__} has no ALGORITHM subclass of bpfree Algorithm")
    return cls


def source_file(impl: str) -> Path:
    """The file that implements `impl` (declared as an input of its jobs so edits rerun them)."""
    spec = importlib.util.find_spec(module_name(impl))
    if spec is None or spec.origin is None:
        raise ValueError(f"unknown algorithm implementation {impl!r}; shipped: {', '.join(available())}")
    return Path(spec.origin)
