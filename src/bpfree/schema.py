"""The config schema (config.schema.yaml beside this module, shipped with the package; the workflow
validates against the same file): its path, and the defaults it declares, read without importing
torch (the report and its statistics need none)."""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"


@functools.cache
def load() -> dict:
    """The schema (libyaml's loader where PyYAML has it: every job reads the schema, and the pure
    Python loader takes about 25 ms of a job's start)."""
    return yaml.load(SCHEMA.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def node(*keys: str) -> dict:
    """The schema of the config key `keys` (e.g. "protocol", "statistics"); () for the whole config."""
    out = load()
    for k in keys:
        out = out["properties"][k]
    return out


def section(*keys: str) -> dict:
    """The `properties` of the schema of `keys`."""
    return node(*keys)["properties"]


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


def first_error(instance, *keys: str) -> str | None:
    """The most relevant complaint of the schema of `keys` about `instance` (that key's value) as
    one line that names the key path ("protocol.statistics.alpha = 0.5: ..."); None if it is valid."""
    import jsonschema

    schema = {**node(*keys), "$defs": load()["$defs"]}  # a section's $refs point at the root's $defs
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(instance))
    if error is None:
        return None
    path = ".".join([*keys, *(f"[{k}]" if isinstance(k, int) else str(k) for k in error.absolute_path)])
    value = f" = {error.instance!r}" if not isinstance(error.instance, (dict, list)) else ""
    message = error.message
    if error.validator == "anyOf" and "description" in error.schema:
        message = f"expected {error.schema['description']}"
    if error.validator == "type" and "description" in error.schema:  # say what belongs there
        types = [error.validator_value] if isinstance(error.validator_value, str) else error.validator_value
        message = f"expected {' or '.join(TYPE_NAMES.get(t, t) for t in types)}: {error.schema['description']}"
    return f"{path.replace('.[', '[') or 'the config'}{value}: {message}"


# JSON Schema's type names, as a config writer reads them
TYPE_NAMES = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
              "number": "a number", "boolean": "true or false", "null": "null"}
