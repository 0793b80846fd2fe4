"""Fairness invariants over every shipped config: the algorithms of a comparison share the
architecture, trial budget, sampler, pruner, stopping rule, split and seeds, and no algorithm entry
can override them."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from bpfree import config
from bpfree.config import ConfigError

from conftest import load_shipped

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))
# What every algorithm of a comparison must share (keys of config.search_spec / train_spec).
SHARED_SPEC = ("architecture", "arch", "stopping", "limit_train", "device", "search")


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_there_are_configs():
    assert any(p.name == "config.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_compared_algorithms_share_the_protocol(path):
    cfg = load_shipped(path)
    for i, comp in enumerate(cfg["comparisons"]):
        specs = {alg: config.search_spec(cfg, comp["architecture"], alg) for alg in comp["algorithms"]}
        trains = {alg: config.train_spec(cfg, comp["architecture"], alg) for alg in comp["algorithms"]}
        first = comp["algorithms"][0]
        for alg in comp["algorithms"][1:]:
            for key in SHARED_SPEC:
                assert specs[alg][key] == specs[first][key], f"{path.name} comparisons[{i}]: {key}, {first} vs {alg}"
            assert trains[alg]["metering"] == trains[first]["metering"]
        search = specs[first]["search"]
        assert {"n_trials", "sampler_seed", "pruner"} <= set(search), "budget, sampler and pruner come from protocol"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_seeds_are_distinct_and_shared_by_every_cell(path):
    cfg = load_shipped(path)
    seeds = cfg["protocol"]["seeds"]
    assert len(seeds) == len(set(seeds)), f"{path.name}: a seed repeats in {seeds}"
    # every cell runs the protocol's seeds: the workflow's final runs are cells x seeds
    assert len(config.cells(cfg)) * len(seeds) == len({(*c, s) for c in config.cells(cfg) for s in seeds})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_algorithm_entries_hold_no_protocol_setting(path):
    for name, entry in _raw(path)["algorithms"].items():
        assert set(entry) <= {"impl", "fixed", "space"}, f"{path.name}: algorithms.{name} has {set(entry)}"
        named = {*entry.get("fixed", {}), *entry.get("space", {})}
        assert not named & config.PROTOCOL_KEYS, f"{path.name}: algorithms.{name} names {named & config.PROTOCOL_KEYS}"


def _default() -> dict:
    return _raw(ROOT / "config" / "config.yaml")


@pytest.mark.parametrize("key,value", [("stopping", {"max_epochs": 500, "patience": 100}), ("seeds", [7]),
                                       ("n_trials", 50), ("search", {"n_trials": 50}), ("split", "mine")])
def test_schema_refuses_protocol_keys_in_an_algorithm_entry(key, value):
    cfg = _default()
    cfg["algorithms"]["mf"][key] = value
    with pytest.raises(ConfigError):
        config.validate(cfg)


@pytest.mark.parametrize("where,key,value", [("fixed", "patience", 100), ("fixed", "max_epochs", 500),
                                             ("fixed", "seed", 3), ("space", "n_trials", {"low": 1, "high": 5})])
def test_check_refuses_protocol_keys_in_fixed_or_space(where, key, value):
    cfg = _default()
    cfg["algorithms"]["mf"].setdefault(where, {})[key] = value
    with pytest.raises(ConfigError, match=key):
        config.validate(cfg)


def test_schema_refuses_repeated_seeds():
    cfg = _default()
    cfg["protocol"]["seeds"] = [0, 1, 1]
    with pytest.raises(ConfigError):
        config.validate(copy.deepcopy(cfg))


def test_one_split_per_dataset_for_every_algorithm_trial_and_seed():
    """The prepared data file (which holds the fixed split) depends on the dataset alone: searches
    and final runs of every algorithm read the same file."""
    rules = {p.stem: p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk")}
    assert '"resources/data/{dataset}.pt"' in rules["data"]
    for name in ("search", "train"):
        data_inputs = [line for line in rules[name].splitlines() if "resources/data/" in line]
        assert data_inputs and all('"resources/data/{dataset}.pt"' in line for line in data_inputs), name
