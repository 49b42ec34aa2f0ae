"""The documentation site: it builds strictly, and its configuration reference is generated from the config models.

    .venv/bin/python -m pytest -q tests/docs      # also part of `make test-fast`

The build runs `mkdocs build --strict` with this interpreter, so it needs the dev extras (mkdocs-material).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from smoltune.config import CompareConfig, PipelineConfig

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "docs" / "hooks" / "config_reference.py"


def _load_hook():
    # mkdocs loads hooks by path; the tests do the same instead of making docs/ a package.
    spec = importlib.util.spec_from_file_location("config_reference_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = _load_hook()


def _leaves(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> dict[str, str | None]:
    """Every leaf field of a JSON schema (dotted name -> description), walked independently of the generator."""
    out: dict[str, str | None] = {}
    for name, prop in node.get("properties", {}).items():
        dotted = f"{prefix}.{name}" if prefix else name
        # A section is a $ref, or one inside allOf / anyOf (an optional section: anyOf [$ref, null]).
        wrapped = prop.get("allOf", []) + prop.get("anyOf", [])
        ref = prop.get("$ref") or next((x["$ref"] for x in wrapped if "$ref" in x), None)
        if ref:
            out.update(_leaves(schema, schema["$defs"][ref.rsplit("/", 1)[-1]], dotted))
        else:
            out[dotted] = prop.get("description")
    return out


def _cell_text(description: str) -> str:
    """A description as the generator writes it into a table cell (one line; specials escaped outside code)."""
    return hook._cell(description)


def test_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site), "-f", str(REPO / "mkdocs.yml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    page = (site / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    assert hook.MARKER not in page
    assert "<code>train.lora.r</code>" in page and "LoRA rank." in page
    # every page of the nav was built, and the hook's source was not published with it
    for name in ("pipeline/training", "operations", "serving", "gpu", "benchmarks", "errors", "development"):
        assert (site / name / "index.html").is_file(), name
    assert not (site / "hooks").exists()


def test_reference_lists_every_pipeline_field_with_its_description() -> None:
    text = hook.config_reference(PipelineConfig)
    leaves = _leaves(PipelineConfig.model_json_schema(), PipelineConfig.model_json_schema())
    assert len(leaves) > 50  # the walk found the real job, not an empty schema
    assert "train.lora.r" in leaves and "train.speed.segment_kernel" in leaves and "preference.beta" in leaves
    for dotted, description in leaves.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{dotted}` |")), None)
        assert row is not None, f"{dotted} missing from the configuration reference"
        if description:
            assert _cell_text(description) in row, f"{dotted}: description not in its row"
    # and every section has its own table, linked from the row that holds it
    for section in ("model", "data", "validation", "train", "train.lora", "train.speed", "eval", "export", "output"):
        assert f"{{ #{hook.anchor(section)} }}" in text
        assert f"](#{hook.anchor(section)})" in text


def test_reference_page_covers_the_compare_job_without_repeating_the_pipeline() -> None:
    page = hook.reference_page()
    assert "| `variants[].name` |" in page and "| `variants[].set` |" in page
    assert "| `variants` |" in page and "required" in page.split("| `variants` |")[1].splitlines()[0]
    assert "](#PipelineConfig)" in page  # CompareConfig.pipeline links to the job documented above it
    assert page.count("| `train.lora.r` |") == 1
    assert set(CompareConfig.model_fields) == {"pipeline", "variants"}  # what this test was written against


def test_types_defaults_and_a_changed_description_show_up() -> None:
    class Probe(BaseModel):
        """A probe's settings."""

        depth: int = Field(3, ge=1, description="How deep the probe goes, in metres.")

    def probe_config(description: str) -> type[BaseModel]:
        return create_model(
            "ProbeJob",
            mode=(Literal["fast", "slow"], Field("fast", description="Which way to probe.")),
            tags=(list[str], Field(default_factory=lambda: ["x", "y"], description=description)),
            limit=(float | None, Field(None, description="Stop after this many <seconds> | never.")),
            probe=(Probe, Field(default_factory=Probe)),
        )

    text = hook.config_reference(probe_config("Labels put on each probe."))
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| `")}
    assert rows["| `mode`"] == '| `mode` | `"fast" | "slow"` | `"fast"` | Which way to probe. |'
    assert rows["| `tags`"] == '| `tags` | `list[str]` | `["x", "y"]` | Labels put on each probe. |'
    limit = r"| `limit` | `float | None` | `null` | Stop after this many &lt;seconds&gt; \| never. |"
    assert rows["| `limit`"] == limit  # outside code spans: HTML escaped (no stray tag), a pipe is no new cell
    assert rows["| `probe.depth`"] == "| `probe.depth` | `int`, ≥ 1 | `3` | How deep the probe goes, in metres. |"
    assert "section [`probe`](#probe)" in rows["| `probe`"] and "A probe's settings." in rows["| `probe`"]
    assert "#### `probe` { #probe }" not in text and "## `probe` { #probe }" in text

    changed = hook.config_reference(probe_config("Labels, now with a new meaning."))
    assert "Labels, now with a new meaning." in changed
    assert "Labels put on each probe." not in changed


def test_reference_page_lost_marker_is_an_error() -> None:
    class Page:
        class file:  # noqa: N801 - mimics mkdocs' page.file
            src_uri = hook.PAGE

    try:
        hook.on_page_markdown("# Configuration reference\n", Page, None, None)
    except ValueError as err:
        assert hook.MARKER in str(err)
    else:
        raise AssertionError("a configuration page without its marker must fail the build")
    filled = hook.on_page_markdown(f"# Configuration reference\n\n{hook.MARKER}\n", Page, None, None)
    assert "| `train.lora.r` |" in filled and hook.MARKER not in filled


def _load_graph_hook():
    spec = importlib.util.spec_from_file_location("import_graph_hook", REPO / "docs" / "hooks" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


graph_hook = _load_graph_hook()


def test_the_import_drawing_counts_imports_between_layers() -> None:
    edges = graph_hook.layer_edges(
        [
            ("flows.finetune", "tasks.train"),
            ("flows.finetune", "tasks.fetch"),
            ("tasks.train", "smoltune.pipeline.cache"),
            ("smoltune.train.runner", "smoltune.pipeline.slots"),  # an upward import: drawn, so it shows
            ("smoltune.train.runner", "smoltune.config"),  # inside one layer: no arrow
            ("smoltune.cli", "flows.finetune"),
        ]
    )
    assert edges == {
        ("flows", "tasks"): 2,
        ("tasks", "pipeline"): 1,
        ("core library", "pipeline"): 1,
        ("entry points", "flows"): 1,
    }
    assert "L4 -->|1| L3" in graph_hook.mermaid(edges)


def test_no_arrow_of_the_real_drawing_points_up() -> None:
    order = [*graph_hook.LAYERS, graph_hook.CORE]
    edges = graph_hook.layer_edges(graph_hook.project_imports())
    assert ("tasks", "core library") in edges and ("pipeline", "core library") in edges
    upward = [(a, b) for a, b in edges if order.index(a) > order.index(b)]
    assert upward == []
