"""Known failures: each carries a one-line message that names the key or the file at fault.

The `bpfree` command prints such an error as one line and exits with status 2 (no traceback);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class BpfreeError(Exception):
    """A failure the user can fix from the message alone (bad input, missing file, diverged run)."""


class ConfigError(BpfreeError, ValueError):
    """A configuration value is invalid; the message names the key and the value."""
