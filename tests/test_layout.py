"""The code's layout: pieces small enough to hold in mind, one record per architecture type, stages
as data (their index and a validated monitor), one frozen-feature cache for greedy methods."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bpfree import config, models
from bpfree.algorithms.base import MONITORS, FrozenFeatures, Stage
from bpfree.data import Data
from bpfree.engine import EarlyStopping, Stopping, fit

SRC = Path(__file__).resolve().parents[1] / "src" / "bpfree"
MAX_FUNCTION, MAX_CLASS = 60, 200
# A docstring that says why a piece must be long: "... is long because ...".
WHY = re.compile(r"\blong(er)?\b[^.]*\bbecause\b", re.IGNORECASE | re.DOTALL)
# Offenders in modules other engineers are reshaping (issue 11): listed so that this test passes
# meanwhile, and checked so that an entry is removed once it is mended.
PENDING: set[str] = set()  # pieces known to be over the limits, waiting to be split


def _plotting(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef) and node.name.startswith("plot_")


def oversized() -> set[str]:
    """`module:name` of every function over MAX_FUNCTION lines and class over MAX_CLASS lines in
    src/bpfree (plotting functions and pieces whose docstring says why they are long excepted)."""
    out = set()
    for f in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or _plotting(node):
                continue
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            if node.end_lineno - node.lineno + 1 > limit and not WHY.search(ast.get_docstring(node) or ""):
                out.add(f"{f.relative_to(SRC).as_posix()}:{node.name}")
    return out


def test_no_function_over_60_lines_nor_class_over_200():
    found = oversized()
    assert found - PENDING == set(), "split these, or say in the docstring why they are long"
    assert PENDING - found == set(), "mended: remove them from PENDING"


def test_size_check_catches_a_long_function(tmp_path, monkeypatch):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION))
    (tmp_path / "long.py").write_text(f"def too_long():\n{body}\n\n\ndef plot_long():\n{body}\n\n\n"
                                      f'def said():\n    """It is long because the test says so."""\n{body}\n')
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert oversized() == {"long.py:too_long"}


# ---- modules: bounded, and packages layered ---------------------------------------------------

MAX_MODULE = 400  # lines: a module beyond it is cut along its seams into a package (issue 26)
# Modules over the bound, waiting to be cut (none now; a new one is listed with its size and seams);
# checked so that an entry goes once it is mended.
LONG_MODULES: set[str] = set()
# The packages cut from a long module: their modules in order; each may import only those before it
# (the package's __init__, which re-exports the public API, comes last), so no import runs back up.
LAYERS = {
    "metering": ["curves", "readers", "methods", "memory", "summary", "baseline", "segments", "meter", "__init__"],
    "report": ["load", "formatting", "tables", "notes", "style", "plots", "outputs", "__init__"],
}


def long_modules() -> set[str]:
    return {f.relative_to(SRC).as_posix() for f in SRC.rglob("*.py")
            if len(f.read_text().splitlines()) > MAX_MODULE}


def test_no_module_over_400_lines():
    found = long_modules()
    assert found - LONG_MODULES == set(), f"cut these along their seams (each module under {MAX_MODULE} lines)"
    assert LONG_MODULES - found == set(), "mended: remove them from LONG_MODULES"


def _siblings(path: Path, package: str) -> set[str]:
    """The modules of bpfree.`package` that the module at `path` imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n.split(".")[2] for n in names if n.startswith(f"bpfree.{package}.") and n.count(".") == 2}
    return out


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_package_imports_only_down_its_layers(package):
    order = LAYERS[package]
    assert {f.stem for f in (SRC / package).glob("*.py")} == set(order), "a new module gets its place in LAYERS"
    for i, name in enumerate(order):
        up = _siblings(SRC / package / f"{name}.py", package) - set(order[:i])
        assert not up, f"bpfree/{package}/{name}.py imports {sorted(up)}, which come after it in LAYERS"


# ---- architectures -----------------------------------------------------------------------------

def test_schema_architecture_types_and_keys_come_from_the_registry():
    schema = yaml.safe_load(config.SCHEMA.read_text())
    entry = schema["properties"]["architectures"]["additionalProperties"]
    assert entry["properties"]["type"]["enum"] == list(models.REGISTRY)
    keys = {"type"} | {k for a in models.REGISTRY.values() for k in (a.layers, *a.options)}
    assert set(entry["properties"]) == keys


@pytest.mark.parametrize("arch, error", [
    ({"type": "mlp"}, "type mlp needs `widths`"),
    ({"type": "cnn", "widths": [4]}, "type cnn needs `channels`"),
    ({"type": "cnn", "channels": [4], "pool": [True]}, "`pool` is a cwc-cnn key, not one of type cnn"),
    ({"type": "mlp", "widths": [4], "groups": [1], "pool": [True]}, "`groups` is a cwc-cnn key"),
    ({"type": "cwc-cnn", "channels": [4, 6], "groups": [1, 4]}, "groups = 4 must divide"),
    ({"type": "resnet", "channels": [4]}, "unknown architecture type 'resnet'; known: mlp, cnn, cwc-cnn"),
])
def test_architecture_check_names_the_problem(arch, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        models.check(arch)


def test_every_registered_type_builds_and_counts_its_multiply_adds():
    shape = (1, 8, 8)
    entries = {"mlp": {"type": "mlp", "widths": [5, 3]}, "cnn": {"type": "cnn", "channels": [2, 3]},
               "cwc-cnn": {"type": "cwc-cnn", "channels": [2, 4]}}
    assert set(entries) == set(models.REGISTRY)  # a new type gets an entry here
    for arch in entries.values():
        models.check(arch)
        net = models.build(arch, shape, 10)
        macs = []
        hooks = [m.register_forward_hook(lambda m, i, o: macs.append(
            o[0].numel() * (m.in_features if isinstance(m, torch.nn.Linear)
                            else m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])))
            for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        net.eval()(torch.zeros(1, *shape))
        for h in hooks:
            h.remove()
        assert models.build_macs(arch, shape, 10) == sum(macs), arch
        assert models.first_layer_macs(arch, shape) == macs[0], arch


# ---- stages ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"monitor": "accuracy"}, {"monitor": "acc", "restore": "Loss"}])
def test_a_misspelt_monitor_is_refused(kw):
    with pytest.raises(ValueError, match="one of acc, loss"):
        Stage("layer1", **kw)


def test_greedy_stages_carry_their_index():
    from bpfree.algorithms.cafo import CaFo

    meta = {"n_classes": 3, "shape": [1, 8, 8]}
    algo = CaFo({"type": "cnn", "channels": [2, 2]}, meta, {"block": "dfa", "loss": "ce", "lr": 1e-3, "batch_size": 8,
                                                            "dfa_lr": 1e-3, "dfa_epochs": 1}, "cpu")
    assert [(s.name, s.index) for s in algo.stages()] == [("dfa", None), ("block1", 0), ("block2", 1)]
    assert set(MONITORS) == {"acc", "loss"}


@pytest.mark.parametrize("monitor, values, stops_at, best", [
    ("acc", [50, 60, 60, 59], 4, 2),  # higher is better: 60 is not beaten by 60
    ("loss", [1.0, 0.5, 0.6, 0.7], 4, 2),
    ("loss", [1.0, 1.1, 1.2, 0.1], 3, 1),  # lower is better: stopped before the late 0.1
])
def test_early_stopping_direction_follows_the_monitor(monitor, values, stops_at, best):
    class Weights:  # what EarlyStopping reads from an algorithm: its weights now (here the epoch)
        epoch = 0

        def state_dict(self):
            return self.epoch

    stopping = Stopping(max_epochs=10, patience=2)
    early, algo = EarlyStopping(Stage("s", monitor=monitor), stopping), Weights()
    for algo.epoch, v in enumerate(values, 1):
        if early.update({"acc": v, "loss": v}, algo, algo.epoch, last=False):
            break
    assert (algo.epoch, early.best_state, early.best_epoch) == (stops_at, best, best)
    again = EarlyStopping(Stage("s", monitor=monitor), stopping)
    again.load_state_dict(early.state_dict())
    assert again.state_dict() == early.state_dict() and again.done


def test_frozen_features_are_extended_layer_by_layer_not_recomputed():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 4) for _ in range(3)]

    def through(x, depth):
        for j in range(depth):
            x = layers[j](x)
        return x

    x, y = torch.randn(20, 4), torch.zeros(20, dtype=torch.long)
    data = Data(x[:12], y[:12], x[12:], y[12:], x[12:], y[12:], {"augment": False})
    from_images = []
    cache = FrozenFeatures(lambda x, depth: from_images.append(depth) or through(x, depth),
                           lambda j, a: layers[j](a))
    for depth in range(3):
        cache.prepare(depth, data)
        with torch.no_grad():
            torch.testing.assert_close(cache.feats["train"], through(data.x_train, depth))
            torch.testing.assert_close(cache.val, through(data.x_val, depth))
    assert from_images == [0, 0]  # only the first stage ran the images (train and val); later ones extend
    idx = torch.tensor([3, 1])
    assert torch.equal(cache.batch(data, idx, torch.Generator()), cache.feats["train"][idx])
    cache.clear()
    cache.prepare(2, data)
    assert from_images == [0, 0, 2, 2]


TIMINGS = ("seconds", "cpu_s", "load_1m")  # measured per epoch, never equal between two runs


@pytest.mark.parametrize("impl, arch, hp, kill_at", [
    ("mf", {"type": "mlp", "widths": [16, 16]}, {"lr": 3e-2, "l2": 0.0}, 5),  # in layer 2, mid early stopping
    ("cafo", {"type": "cnn", "channels": [4, 4]}, {"block": "dfa", "loss": "ce", "lr": 1e-2, "dfa_lr": 1e-3,
                                                  "dfa_epochs": 2}, 4),  # in block 1, after the DFA phase
])
def test_greedy_runs_killed_mid_stage_resume_bit_identically(tmp_path, impl, arch, hp, kill_at):
    """Checkpoints hold the early-stopping state; the frozen-feature cache is rebuilt by replaying
    the finished stages: the resumed run's history and weights equal an uninterrupted run's."""
    from bpfree import algorithms
    from bpfree.checkpoint import Checkpoint

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(140, 1, 8, 8, generator=g), torch.randint(0, 3, (140,), generator=g)
    data = Data(x[:100], y[:100], x[100:], y[100:], x[100:], y[100:], {"n_classes": 3, "shape": [1, 8, 8]})
    stopping = Stopping(max_epochs=6, patience=2)

    def run(path, kill=None):
        torch.manual_seed(0)
        algo = algorithms.get(impl)(arch, data.meta, {"batch_size": 32, **hp}, "cpu")

        def on_epoch(record):
            if record["epoch"] == kill:
                raise KeyboardInterrupt
        res = fit(algo, data, stopping, seed=0, on_epoch=on_epoch, checkpoint=Checkpoint(path, "k", every_s=0))
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in res.history], algo.net.state_dict()

    whole, weights = run(tmp_path / "whole.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed.pt", kill=kill_at)
    resumed, resumed_weights = run(tmp_path / "killed.pt")
    assert len(whole) > kill_at and resumed == whole
    for k, v in weights.items():
        assert torch.equal(resumed_weights[k], v), k
