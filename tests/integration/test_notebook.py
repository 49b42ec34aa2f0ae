"""notebooks/colab_t4.ipynb runs from top to bottom (nbclient, a real Jupyter kernel), on the CPU: a cell after
the parameters keeps configs/t4.yaml (Unsloth, the T4's settings) but points it at the tiny model for a few steps,
as papermill injects parameters. The install cell sees the checkout and installs nothing (Colab's install path
needs a network; what it relies on is checked: the project admits Colab's Python); the run, report, loss curve,
adapter and comparison cells all run, the CLI called as `python -m smoltune.cli` as on Colab."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.tiny_model import tiny_overrides

NOTEBOOK = REPO / "notebooks" / "colab_t4.ipynb"


@pytest.mark.slow  # over 30 s: `make test-slow` (CI runs it after `make test`)
def test_the_colab_notebook_runs_on_the_smoke_job(tiny_model_dir: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    [index] = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    compare = tmp_path / "compare.yaml"
    compare.write_text(
        "variants:\n  - {name: lora-r4, set: {train.lora.r: 4, train.lora.alpha: 4}}\n"
        "  - {name: full, set: {train.mode: full}}\n"
    )
    overrides = tiny_overrides(tiny_model_dir, tmp_path / "runs")
    injected = (
        f'CONFIG = "configs/t4.yaml"\nOVERRIDES = {overrides!r}\n'
        f"COMPARE_CONFIG = {str(compare)!r}\nCOMPARE_OVERRIDES = {overrides!r}\n"
    )
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    ).execute()

    outputs = {i: "".join(o.get("text", "") for o in cell.get("outputs", [])) for i, cell in enumerate(notebook.cells)}
    run_dirs = [d for d in (tmp_path / "runs").iterdir() if d.is_dir() and d.name != "_cache"]
    assert len(run_dirs) == 2  # the run and the comparison
    printed = "\n".join(outputs.values())
    assert "no GPU: this runs on the CPU" in printed and "adapter_model.safetensors" in printed
    displays = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "display_data"]
    assert any("image/png" in o["data"] for o in displays)  # the loss curve, inline
    markdown = [o["data"]["text/markdown"] for o in displays if "text/markdown" in o["data"]]
    assert any("| lora-r4 |" in text for text in markdown)  # the comparison report
    assert any("smoltune" in text and "Training" in text for text in markdown)  # the run's report
    [run] = [d for d in run_dirs if (d / "summary.json").is_file()]
    assert json.loads((run / "summary.json").read_text())["train"]["backend"] == "unsloth"  # t4.yaml's backend


def test_the_project_installs_on_colabs_python() -> None:
    import tomllib

    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "3.12" in SpecifierSet(project["requires-python"]) and "3.11" in SpecifierSet(project["requires-python"])
