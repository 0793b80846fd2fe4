"""Atomic result files: write to a temporary file beside the target, then rename, so that a
killed job never leaves a half-written result that looks finished."""
from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from bpfree.errors import FileError


def tmp_path(path: Path) -> Path:
    """A temporary name beside `path` (its folder created), for a write then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic(path: str | Path, suffix: str = "tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; when the block ends it replaces `path`. On
    any failure the temporary file is removed and `path` is left as it was; an OSError (a full disk,
    no permission, a folder in the way) becomes FileError naming `path`."""
    path = Path(path)
    tmp = None
    try:
        tmp = tmp_path(path).with_suffix(f".{suffix}")
        yield tmp
        tmp.replace(path)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise FileError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic(path) as tmp:
        tmp.write_text(text)


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


class DuplicateKey(yaml.constructor.ConstructorError):
    pass


class StrictYaml(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (with both lines)."""

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key == "<<" or not isinstance(key, (str, int, float, bool)):  # merge keys; PyYAML refuses the rest
                continue
            if key in first:
                raise DuplicateKey(
                    None, None, f"the key {key!r} is given twice (first on line {first[key] + 1})", key_node.start_mark)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The parsed YAML file, read strictly: FileError naming it when it cannot be read, is empty,
    is not YAML (with the line and column), or gives one key twice in a mapping (PyYAML would keep
    the last one without a word: a second `bp:` entry would replace the first)."""
    try:
        with open(path) as f:
            value = yaml.load(f, StrictYaml)
    except OSError as e:
        raise FileError(f"cannot read {what} {path}: {e.strerror}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem if isinstance(e, DuplicateKey) else f"not valid YAML: {e.problem}"
        raise FileError(f"{what} {path}{where}: {problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise FileError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if value is None:
        raise FileError(f"{what} {path} is empty")
    return value


def read_csv(path: str | Path, what: str = "CSV file", remedy: str = ""):
    """The file as a pandas DataFrame, or FileError naming it (missing, unreadable, empty or
    malformed); `remedy` is appended to the message ("; restore it, ...")."""
    import pandas as pd

    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise FileError(f"{what} {path} does not exist{remedy}") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise FileError(f"{what} {path} is not readable as CSV ({getattr(e, 'strerror', None) or type(e).__name__})"
                        f"{remedy}") from None


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


def check_outputs(files: Iterable[str | Path | None]) -> None:
    """FileError naming the first output that is a folder, or whose folder cannot be written:
    checked before a job's long work, not after it."""
    files = [Path(f) for f in files if f]
    for f in files:
        if f.is_dir():
            raise FileError(f"the output {f} is a folder: give a file path, or remove the folder")
    for folder in dict.fromkeys(f.parent for f in files):
        check_writable(folder)


def alive(pid: int) -> bool:
    """Whether process `pid` of this host runs."""
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
            if m and int(m[1]) != os.getpid() and not alive(int(m[1])):
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
    with atomic(path, suffix=Path(path).suffix.lstrip(".")) as tmp:
        fig.savefig(tmp, **kw)
