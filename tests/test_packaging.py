"""`pip install .` (not editable): the wheel holds every file the package reads at run time (the
config schema, the published tables), and the installed copy imports and answers `bpfree --version`
from a folder outside the checkout. Offline: the wheel is built without build isolation (the
venv's setuptools) and installed without dependencies into a folder put first on PYTHONPATH."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from cluster_helpers import REPO, env


def _run(*cmd, cwd: Path, extra_env: dict | None = None) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, \
        f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_installed_wheel_imports_and_answers_version_outside_the_checkout(tmp_path):
    project = tmp_path / "project"  # a copy, so that the build leaves nothing in the checkout
    project.mkdir()
    for f in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / f, project / f)
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = (sys.executable, "-m", "pip", "-q", "--disable-pip-version-check")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "wheels", project,
         cwd=tmp_path)
    (wheel,) = (tmp_path / "wheels").glob("bpfree-*.whl")
    site = tmp_path / "site"
    _run(*pip, "install", "--no-deps", "--no-index", "--target", site, wheel, cwd=tmp_path)

    away = tmp_path / "elsewhere"
    away.mkdir()
    installed = {"PYTHONPATH": str(site)}  # the installed copy, not the checkout's src/
    code = ("import bpfree, bpfree.config, bpfree.stats, bpfree.sources, bpfree.schema\n"
            "print(bpfree.__file__, bpfree.sources.checkout(), len(bpfree.schema.defaults('protocol')))")
    where, checkout, defaults = _run(sys.executable, "-c", code, cwd=away, extra_env=installed).split()
    assert Path(where).is_relative_to(site) and checkout == "None" and int(defaults) > 0
    version = _run(site / "bin" / "bpfree", "--version", cwd=away, extra_env=installed)
    release = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert version.strip() == f"bpfree {release}, commit unknown (not a checkout)"
