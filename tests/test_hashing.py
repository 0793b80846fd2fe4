"""One hash function (bpfree.sources.digest) for specs, checkpoints, study keys and files, with the
values the four functions it replaced gave: persisted names (study journals, checkpoint keys) keep
resolving across the change."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from bpfree import algorithms, config, sources

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"algorithm": "mf", "search": {"n_trials": 8, "space": {"lr": {"low": 1e-4}}}}


def test_digest_keeps_the_values_of_the_four_functions_it_replaced(tmp_path):
    # computed with config.spec_hash, checkpoint.key and provenance.spec_sha256 before the change
    files = [tmp_path / "a.py", tmp_path / "b.py"]
    files[0].write_bytes(b"engine")
    files[1].write_bytes(b"models")
    assert sources.study_key(SPEC, files) == "361e75495ec4"
    assert sources.digest([SPEC, {"lr": 0.1}, 0]) == "fdb4e96d3e24c8d43350373efd30b41e4eb439ddae9b0fc362fbd5349f106758"
    assert sources.digest(SPEC) == "ff0f474d3bbda2c40ddf0f1ab5966c1dc051db7651bc470c531ba8ed2101d794"
    assert sources.digest(files=files[:1]) == hashlib.sha256(b"engine").hexdigest()
    assert sources.digest({"a": 1}, files) != sources.digest({"a": 1})  # the files count


def test_default_config_study_journals_keep_their_names():
    """The workflow's study key (workflow/rules/common.smk) of every default cell, against the
    formula it had before: sha256 of the code files' bytes, then of the spec with it, 12 digits."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    src = ROOT / "src" / "bpfree"
    smk = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert "bpsources.study_key(spec, files)" in smk  # the workflow names its journals with this function
    for _, arch, alg in config.cells(cfg):
        spec = config.search_spec(cfg, arch, alg)
        impl = cfg["algorithms"][alg]["impl"]
        files = [str(p) for p in algorithms.with_imports(src / "algorithms" / f"{impl}.py")]
        files += [str(f) for f in sources.core(src)]
        code = hashlib.sha256(b"".join(Path(f).read_bytes() for f in files)).hexdigest()
        before = hashlib.sha256(json.dumps({"spec": spec, "code": code}, sort_keys=True).encode()).hexdigest()[:12]
        assert sources.study_key(spec, files) == before, (arch, alg)
