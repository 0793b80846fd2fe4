"""The original study's published numbers, shipped as package data (see PROVENANCE.md)."""
from __future__ import annotations

from importlib import resources

import pandas as pd

TABLES = ("results", "deltas", "hyperparameters", "claims")


def path(name: str):
    """The packaged file of table `name` (results, deltas, hyperparameters or claims)."""
    if name not in TABLES:
        raise ValueError(f"published table {name!r}: choose one of {', '.join(TABLES)}")
    return resources.files(__package__) / f"published_{name}.csv"


def load(name: str) -> pd.DataFrame:
    """Table `name` as a DataFrame."""
    with path(name).open() as f:
        return pd.read_csv(f)
