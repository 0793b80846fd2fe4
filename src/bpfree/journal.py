"""The study journal: Optuna's journal file made to survive a torn write and to name itself in every
error (a corrupt line, a write that fails), and the storage a study opens on it (bpfree.search)."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.storages.journal._file import get_lock_file

from bpfree.errors import FileError


class JournalError(FileError):
    """A study journal holds a corrupt record or cannot be written; the message names the file (and
    the line and the remedy)."""


@contextlib.contextmanager
def _journal_writes(path: str) -> Iterator[None]:
    """An OSError on the journal or its lock file (no permission, a full disk, a folder in the way)
    becomes JournalError naming the journal."""
    try:
        yield
    except OSError as e:
        raise JournalError(f"cannot write the study journal {path} (or its lock file): {e.strerror or e}") from None


class Journal(JournalFileBackend):
    """Optuna's journal file, made to survive a torn write (a full disk, a lost node, a killed
    write): a last record without its newline would be glued to the next appended record, and
    every later read of the study would fail. Under the journal's lock, on opening and before
    every append, an unterminated last line is repaired: kept (newline added) if it is a complete
    record, removed if it is a cut-off one. A corrupt record before the last line stops reads with
    JournalError naming the file, the line and what to do. `log(message)` reports repairs."""

    def __init__(self, path: str, log: Callable[[str], None] | None = None):
        self.log = log or (lambda msg: None)
        with _journal_writes(path):
            super().__init__(path, lock_obj=JournalFileOpenLock(path))
            with get_lock_file(self._lock):
                check_journal(path)
                self._repair_tail()

    def _repair_tail(self) -> None:
        """Call under the lock."""
        with open(self._file_path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            start = size - min(size, 1 << 20)
            while True:  # the last newline before the end (records are small; read back in blocks)
                f.seek(start)
                block = f.read(size - start)
                cut = block.rfind(b"\n")
                if cut >= 0 or start == 0:
                    break
                start = max(0, start - (1 << 20))
            keep = start + cut + 1
            f.seek(keep)
            tail = f.read()
            try:
                json.loads(tail)
            except ValueError:
                f.truncate(keep)
                msg = f"removed its last line ({len(tail)} bytes, a record cut off by an interrupted write)"
            else:
                f.write(b"\n")
                msg = "terminated its last line (a complete record whose newline was not written)"
            f.flush()
            os.fsync(f.fileno())
        self.log(f"repaired the study journal {self._file_path}: {msg}")

    def read_logs(self, log_number_from: int):
        try:
            yield from super().read_logs(log_number_from)
        except ValueError:  # JSONDecodeError, or Optuna's "Invalid log format." for a glued line
            check_journal(self._file_path)
            raise

    def append_logs(self, logs: list[dict]) -> None:
        with _journal_writes(self._file_path), get_lock_file(self._lock):
            self._repair_tail()
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            with open(self._file_path, "ab") as f:
                f.write(text.encode())
                f.flush()
                os.fsync(f.fileno())


def check_journal(path: str | Path) -> None:
    """JournalError naming `path`, the line and what to do if a complete (newline-terminated) line
    is not a JSON record; an unterminated last line is a torn write, which Journal repairs."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1] is b"" or an unterminated tail
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        else:
            why = "not a record"
        if not ok:
            raise JournalError(
                f"study journal {path}: line {number} of {len(lines) - 1} is corrupt ({why}); the study cannot "
                f"be read past it. Keep the trials before it with `head -n {number - 1} {path} > {path}.fixed "
                f"&& mv {path}.fixed {path}`, or move the journal aside to start the study afresh")


def storage(journal: str | Path, log: Callable[[str], None] | None = None) -> optuna.storages.JournalStorage:
    path = str(journal)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(Journal(path, log))
