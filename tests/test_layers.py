"""The one-way layers of ../shared/DESIGN.md hold: import-linter's contracts (pyproject.toml) pass, and a
core module that imported the Prefect layer would break them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_every_module_of_the_package_is_in_a_layer() -> None:
    """A new top-level module must be placed in a contract, else no contract would look at it."""
    import pkgutil
    import tomllib

    import smoltune

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [core] = [c["source_modules"] for c in contracts if c["name"].startswith("The core library imports nothing")]
    [layers] = [c["layers"] for c in contracts if c["type"] == "layers"]
    placed = {m.removeprefix("smoltune.") for m in [*core, *layers] if m.startswith("smoltune.")}
    modules = {m.name for m in pkgutil.iter_modules(smoltune.__path__)}
    assert modules - placed == set(), "add these to the core list or to a layer in pyproject.toml"


def test_a_core_module_importing_the_pipeline_breaks_them(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    for name in ("src", "flows", "tasks", "data_checks"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    model = copy / "src" / "smoltune" / "model.py"
    model.write_text(model.read_text() + "\nfrom smoltune.pipeline.slots import machine_slot  # noqa\n")
    # The copy's packages, not the installed ones, are what import-linter reads.
    env_path = f"{copy / 'src'}:{copy}"
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "The core library imports nothing above it BROKEN" in result.stdout
    assert "smoltune.model -> smoltune.pipeline.slots" in result.stdout
