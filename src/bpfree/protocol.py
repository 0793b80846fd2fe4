"""`protocol.search` and `protocol.metering` of the config as frozen dataclasses whose defaults are
the schema's (src/bpfree/config.schema.yaml, their one home), as `bpfree.stats.StatsConfig` is for
`protocol.statistics`. Specs stay JSON dicts (they travel through Snakemake's `params:` and
`--spec`); the code that reads a section builds its dataclass there with `from_dict`, which refuses
what the schema refuses (an unknown key, a bad value) with a ConfigError naming the key. No torch."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from bpfree import schema
from bpfree.errors import ConfigError

SEARCH = schema.defaults("protocol", "search")
METERING = schema.defaults("protocol", "metering")
PRUNER = SEARCH["pruner"]


def _checked(d: dict | None, section: str) -> dict:
    d = dict(d or {})
    why = schema.first_error(d, "protocol", section)
    if why:
        raise ConfigError(why)
    return d


@dataclass(frozen=True)
class PrunerConfig:
    """`protocol.search.pruner`: Optuna's median pruner, or none."""

    type: str = PRUNER["type"]
    n_startup_trials: int = PRUNER["n_startup_trials"]
    n_warmup_steps: int = PRUNER["n_warmup_steps"]


@dataclass(frozen=True)
class SearchConfig:
    """`protocol.search` (or a search spec's `search`). `stopping` None: trials stop as final runs
    do (the schema declares no default for it, only for its `min_delta`)."""

    n_trials: int
    sampler_seed: int = SEARCH["sampler_seed"]
    workers: int = SEARCH["workers"]
    limit_train: int | None = SEARCH["limit_train"]
    limit_val: int | None = SEARCH["limit_val"]
    stopping: dict | None = None
    pruner: PrunerConfig = field(default_factory=PrunerConfig)

    @classmethod
    def from_dict(cls, d: dict | None) -> SearchConfig:
        d = _checked(d, "search")
        d["pruner"] = PrunerConfig(**d.get("pruner", {}))
        return cls(**d)


@dataclass(frozen=True)
class MeteringConfig:
    """`protocol.metering` (or a train spec's `metering`): how a final run is metered."""

    country_iso_code: str = METERING["country_iso_code"]
    idle_seconds: float = METERING["idle_seconds"]
    cooldown_s: float = METERING["cooldown_s"]
    sample_hz: float = METERING["sample_hz"]
    estimate_interval_s: float = METERING["estimate_interval_s"]
    alone: bool = METERING["alone"]
    idle_reuse_s: float = METERING["idle_reuse_s"]

    @classmethod
    def from_dict(cls, d: dict | None) -> MeteringConfig:
        """Also refuses a country code CodeCarbon has no carbon intensity for (`check_country`)."""
        out = cls(**_checked(d, "metering"))
        check_country(out.country_iso_code)
        return out


def check_country(code: str) -> None:
    """ConfigError unless CodeCarbon has a carbon intensity for the ISO 3166-1 alpha-3 `code`: for
    a code it does not know, CodeCarbon records the world average under that code's name."""
    from codecarbon.input import DataSource

    known = DataSource().get_global_energy_mix_data()
    if code not in known:
        close = difflib.get_close_matches(code, known, n=3, cutoff=0.6)
        raise ConfigError(f"protocol.metering.country_iso_code = {code!r}: CodeCarbon has no carbon intensity for "
                          "this country code (it would record the world average); give an ISO 3166-1 alpha-3 code "
                          f"such as {', '.join(close or ['FRA', 'DEU', 'USA'])}")
