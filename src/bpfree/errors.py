"""Known failures: each carries a one-line message that names the key or the file at fault.

The `bpfree` command prints such an error as one line and exits with status 2 (no traceback);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class BpfreeError(Exception):
    """A failure the user can fix from the message alone (bad input, missing file, diverged run)."""


class ConfigError(BpfreeError, ValueError):
    """A configuration value is invalid; the message names the key and the value."""


class FileError(BpfreeError):
    """A file a job reads (metrics.json, best.json, a worker file, a journal, a prepared data set)
    is missing, truncated or malformed, or a folder a job writes to cannot be written; the message
    names the file and what to do."""
