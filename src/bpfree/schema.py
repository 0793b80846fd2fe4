"""The config schema (workflow/schemas/config.schema.yaml): its path, and the defaults it declares,
read without importing torch (the report and its statistics need none)."""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def load() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def section(*keys: str) -> dict:
    """The schema of the config key `keys` (e.g. "protocol", "statistics"): its `properties`."""
    node = load()
    for k in keys:
        node = node["properties"][k]
    return node["properties"]


def defaults(*keys: str) -> dict:
    """The default of every key the schema of `keys` declares one for (nested objects: their own
    defaults, as a dict)."""
    out = {}
    for k, v in section(*keys).items():
        if "properties" in v:
            out[k] = defaults(*keys, k)
        elif "default" in v:
            out[k] = v["default"]
    return out
