"""Atomic result files: write to a temporary file beside the target, then rename, so that a
killed job never leaves a half-written result that looks finished."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bpfree.errors import FileError


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


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The parsed file, or FileError naming it (missing, unreadable, truncated or malformed)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise FileError(f"cannot read {what} {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileError(f"{what} {path} is truncated or malformed ({e}); delete it and rerun the job "
                        "that writes it") from None


def check_writable(folder: str | Path) -> None:
    """FileError naming `folder` unless it exists (or can be made) and a file can be created in it:
    checked before a job's long work, not after it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tmp_path(folder / ".write-check")
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise FileError(f"cannot write to the output folder {folder}: {e.strerror or e}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_tmp(targets: Iterable[str | Path]) -> list[Path]:
    """Remove the temporary files that an interrupted atomic write of one of `targets` left beside
    it (`.<name>.<pid>.tmp`, see tmp_path; figures keep their suffix) when their process is gone.
    Call at the start of the job that owns the targets. Returns what was removed."""
    removed = []
    for target in map(Path, targets):
        if not target.parent.is_dir():
            continue
        pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.(tmp|{re.escape(target.suffix.lstrip('.'))})")
        for f in target.parent.iterdir():
            m = pattern.fullmatch(f.name)
            if m and int(m[1]) != os.getpid() and not _alive(int(m[1])):
                f.unlink(missing_ok=True)
                removed.append(f)
    return removed


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
