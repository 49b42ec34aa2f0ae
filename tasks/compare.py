"""Prefect task: the comparison report (Markdown, HTML, loss curves, JSON, artifacts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from smoltune.files import atomic_write_bytes_stream, atomic_write_json, atomic_write_text
from smoltune.records import Evaluated, Trained
from smoltune.report.compare import COMPARE_CURVES, check_claims, comparison_row, pick_pair, render_comparison
from smoltune.report.html import inline_images, render_html
from smoltune.report.plots import loss_curve_png

COMPARE_ARTIFACT_KEY = "smoltune-compare"
COMPARE_TABLE_KEY = "smoltune-compare-table"


@dataclass(frozen=True)
class VariantResult:
    name: str
    trained: Trained
    evaluated: Evaluated


@task(name="compare_report", cache_policy=NO_CACHE)
def compare_report_task(run_dir: str, results: list[VariantResult]) -> str:
    folder = Path(run_dir)
    rows = [
        comparison_row(r.name, asdict(r.trained.result), r.evaluated.figures.model_dump(), r.trained.result.saved_mb)
        for r in results
    ]
    pair = pick_pair(rows)
    claims = check_claims(*pair) if pair else []
    names = (pair[0]["variant"], pair[1]["variant"]) if pair else None
    markdown = render_comparison(rows, claims, names, f"smoltune comparison `{folder.name}`")
    curves = loss_curve_png({r["variant"]: r["losses"] for r in rows}, "Training loss by variant")
    atomic_write_bytes_stream(folder / COMPARE_CURVES, [curves])
    atomic_write_text(folder / "compare.md", markdown)
    atomic_write_text(folder / "compare.html", render_html(markdown, {COMPARE_CURVES: curves}, folder.name))
    atomic_write_json(folder / "compare.json", {"rows": rows, "claims": claims, "pair": names})
    description = f"smoltune comparison {folder.name}"
    create_markdown_artifact(
        key=COMPARE_ARTIFACT_KEY,
        markdown=inline_images(markdown, {COMPARE_CURVES: curves}),
        description=description,
    )
    table = [{k: v for k, v in r.items() if k != "losses"} for r in rows]
    create_table_artifact(key=COMPARE_TABLE_KEY, table=table, description=description)
    return str(folder / "compare.md")
