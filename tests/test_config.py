"""Config validation: bad values are rejected with a message that names the key and the value."""
from __future__ import annotations

import copy
import re
import subprocess

import pytest
import yaml

from bpfree import config
from bpfree.config import ConfigError

from conftest import ROOT, load_shipped


@pytest.fixture
def cfg() -> dict:
    with open(ROOT / "config" / "config.yaml") as f:
        return yaml.safe_load(f)


def test_default_config_is_valid_and_gets_defaults(cfg):
    config.validate(cfg)
    assert cfg["protocol"]["stopping"]["min_delta"] == 0.0 or "min_delta" in cfg["protocol"]["stopping"]
    assert cfg["protocol"]["search"]["pruner"]["type"] in ("median", "none")
    assert config.cells(cfg)  # something to run


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    load_shipped(path)


def test_unknown_algorithm_is_named(cfg):
    cfg["comparisons"][0]["algorithms"].append("backprop2")
    with pytest.raises(ConfigError, match=r"comparisons\[0\]\.algorithms: unknown algorithm 'backprop2'"):
        config.validate(cfg)


def test_unknown_implementation_is_named(cfg):
    cfg["algorithms"]["mf"]["impl"] = "nosuchalgo"
    with pytest.raises(ConfigError, match=r"algorithms\.mf\.impl = 'nosuchalgo'"):
        config.validate(cfg)


def test_unknown_dataset_is_named(cfg):
    cfg["datasets"] = ["digits", "svhn"]
    with pytest.raises(ConfigError, match="svhn"):
        config.validate(cfg)


def test_negative_learning_rate_bound_is_named(cfg):
    cfg["algorithms"]["mf"]["space"]["lr"]["low"] = -0.001
    with pytest.raises(ConfigError, match=r"algorithms\.mf\.space\.lr\.low = -0\.001"):
        config.validate(cfg)


def test_inverted_bounds_and_fixed_lr(cfg):
    bad = copy.deepcopy(cfg)
    bad["algorithms"]["bp"]["space"]["weight_decay"].update(low=1e-2, high=1e-4)
    with pytest.raises(ConfigError, match=r"algorithms\.bp\.space\.weight_decay\.low = 0\.01 is above"):
        config.validate(bad)
    cfg["algorithms"]["bp"]["fixed"]["lr"] = 0
    with pytest.raises(ConfigError, match=r"algorithms\.bp\.fixed\.lr = 0"):
        config.validate(cfg)


def test_algorithm_entries_cannot_override_the_protocol(cfg):
    """Fairness: budget, stopping rule and seeds can only be set once, under protocol."""
    for key, value in [("n_trials", 100), ("stopping", {"patience": 50}), ("seeds", [7])]:
        bad = copy.deepcopy(cfg)
        bad["algorithms"]["mf"][key] = value
        with pytest.raises(ConfigError, match=key):
            config.validate(bad)


def test_schema_errors_name_the_key(cfg):
    cfg["protocol"]["stopping"]["patience"] = 0
    with pytest.raises(ConfigError, match="patience"):
        config.validate(cfg)


def test_a_value_of_the_wrong_type_is_told_what_belongs_there(cfg):
    """Regression: a number given as a search range read "-1 is not of type 'object'"."""
    cfg["algorithms"]["bp"]["space"]["lr"] = -1
    with pytest.raises(ConfigError, match=r"algorithms\.bp\.space\.lr = -1: expected a mapping: .*\{low: "):
        config.validate(cfg)
    cfg["algorithms"]["bp"]["space"]["lr"] = {"low": 1e-4, "high": 1e-2}
    cfg["threads"] = "two"
    with pytest.raises(ConfigError, match=r"threads = 'two': expected an integer: CPU threads"):
        config.validate(cfg)


def test_digits_only_without_data_root(cfg):
    cfg["datasets"] = ["mnist"]
    with pytest.raises(ConfigError, match="data_root = null"):
        config.validate(cfg)


def test_specs_carry_what_changes_results(cfg):
    config.validate(cfg)
    arch = cfg["comparisons"][0]["architecture"]
    s = config.search_spec(cfg, arch, "mf")
    t = config.train_spec(cfg, arch, "mf")
    assert s["space"] == cfg["algorithms"]["mf"]["space"] and "space" not in t
    assert s["stopping"] == t["stopping"] == cfg["protocol"]["stopping"]
    changed = copy.deepcopy(cfg)
    changed["algorithms"]["mf"]["space"]["lr"]["high"] = 0.5
    assert config.search_spec(changed, arch, "mf") != s
    assert config.search_spec(changed, arch, "bp") == config.search_spec(cfg, arch, "bp")
    assert config.train_spec(changed, arch, "mf") == t


def test_bad_checkpoint_interval_in_the_environment_is_named(monkeypatch, capsys):
    """Regression: the variable was parsed while building the parser, so a bad value crashed every
    `bpfree` command with a traceback; now only `train` reads it, and says what is wrong."""
    from bpfree import cli

    monkeypatch.setenv("BPFREE_CHECKPOINT_EVERY", "ten")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--spec", "{}", "--data", "x.pt", "--best", "b.json", "--seed", "0", "--out-dir", "o"])
    assert e.value.code == 2
    assert "BPFREE_CHECKPOINT_EVERY = 'ten' is not a number" in capsys.readouterr().err
    cli.main(["doctor", "--json"])  # other commands do not read it
    assert capsys.readouterr().out.startswith("{")


def test_bpfree_version_names_the_release_and_the_commit(capsys):
    from bpfree import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    assert re.fullmatch(rf"bpfree \S+, commit {commit.stdout.strip()}\n", capsys.readouterr().out)  # from a checkout


def test_configfiles_of_a_snakemake_command_line_are_read_in_every_spelling(tmp_path, monkeypatch, capsys):
    """config.check_files (called while the workflow's profiles are read) finds the files after
    `--configfile X Y`, `--configfiles X` and `--configfile=X`, and stops at the next option."""
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"datasets": ["digits"]}))
    for argv in (["--configfile", str(good), str(good), "--cores", "1"], [f"--configfile={good}", "all"],
                 ["--configfiles", str(good), "-n"], ["-n"]):
        monkeypatch.setattr("sys.argv", ["snakemake", *argv])
        config.check_files()  # no exit
    for argv in (["--configfile", str(good), str(tmp_path / "typo.yaml")], [f"--configfile={tmp_path / 'typo.yaml'}"]):
        monkeypatch.setattr("sys.argv", ["snakemake", *argv])
        with pytest.raises(SystemExit) as e:
            config.check_files()
        assert e.value.code == 2
        assert f"cannot read config file {tmp_path / 'typo.yaml'}" in capsys.readouterr().err


# ---- protocol.search and protocol.metering: one home per default (issue 26) -------------------

def test_protocol_dataclasses_declare_every_schema_key_with_its_default():
    from dataclasses import fields

    from bpfree import protocol, schema

    for cls, section in ((protocol.SearchConfig, "search"), (protocol.MeteringConfig, "metering")):
        assert {f.name for f in fields(cls)} == set(schema.section("protocol", section))
    m = protocol.MeteringConfig.from_dict({})
    assert m == protocol.MeteringConfig()
    assert m.country_iso_code == schema.defaults("protocol", "metering")["country_iso_code"]
    s = protocol.SearchConfig.from_dict({"n_trials": 3})
    assert (s.sampler_seed, s.limit_train, s.stopping, s.pruner) == (0, None, None, protocol.PrunerConfig())
    assert protocol.SearchConfig.from_dict({"n_trials": 3, "pruner": {"type": "none"}}).pruner.n_warmup_steps == 2


@pytest.mark.parametrize("section,d", [("search", {"n_trials": 1, "sampler_sed": 1}),
                                       ("metering", {"idle_second": 5})])
def test_protocol_dataclasses_refuse_an_unknown_key_by_name(section, d):
    from bpfree import protocol

    cls = protocol.SearchConfig if section == "search" else protocol.MeteringConfig
    with pytest.raises(config.ConfigError, match=f"protocol.{section}.*{next(k for k in d if k != 'n_trials')}"):
        cls.from_dict(d)
