"""Atomic result files: write to a temporary file beside the target, then rename, so that a
killed job never leaves a half-written result that looks finished."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def tmp_path(path: Path) -> Path:
    """A temporary name beside `path` (its folder created), for a write then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = tmp_path(path)
    tmp.write_text(text)
    tmp.replace(path)


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_default, allow_nan=True) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_csv(path: str | Path, df) -> None:
    """Write a pandas DataFrame (None or empty writes an empty file with no rows)."""
    import pandas as pd

    if df is None:
        df = pd.DataFrame()
    write_text(path, df.to_csv(index=False))


def save_figure(fig, path: str | Path, **kw) -> None:
    path = Path(path)
    tmp = tmp_path(path).with_suffix(path.suffix)
    fig.savefig(tmp, **kw)
    tmp.replace(path)
