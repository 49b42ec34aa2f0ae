"""Prefect task: the comparison report (Markdown, HTML, loss curves, JSON, artifacts), a DPO variant's result
beside its SFT one."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from smoltune.files import atomic_write_bytes_stream, atomic_write_json, atomic_write_text
from smoltune.records import Evaluated, PreferenceEvaluated, PreferenceTrained, Trained
from smoltune.report.compare import (
    COMPARE_CURVES,
    check_claims,
    comparison_row,
    is_dpo,
    pick_pair,
    preference_row,
    render_comparison,
)
from smoltune.report.html import inline_images, render_html
from smoltune.report.plots import loss_curve_png

COMPARE_ARTIFACT_KEY = "smoltune-compare"
COMPARE_TABLE_KEY = "smoltune-compare-table"


@dataclass(frozen=True)
class VariantResult:
    name: str
    trained: Trained
    evaluated: Evaluated
    # A variant that sets `preference`: its DPO training on top of `trained`, and that training's evaluation.
    dpo: PreferenceTrained | None = None
    dpo_evaluated: PreferenceEvaluated | None = None


def variant_rows(result: VariantResult) -> list[dict]:
    """The variant's SFT row, then its DPO row when it was tuned with DPO."""
    trained = result.trained.result
    rows = [comparison_row(result.name, asdict(trained), result.evaluated.figures.model_dump(), trained.saved_mb)]
    if result.dpo is not None and result.dpo_evaluated is not None:
        dpo, figures = result.dpo.result, result.dpo_evaluated.figures.model_dump()
        rows.append(preference_row(result.name, asdict(dpo), figures, dpo.saved_mb))
    return rows


@task(name="compare_report", cache_policy=NO_CACHE)
def compare_report_task(run_dir: str, results: list[VariantResult]) -> str:
    folder = Path(run_dir)
    rows = [row for r in results for row in variant_rows(r)]
    pair = pick_pair(rows)
    claims = check_claims(*pair) if pair else []
    names = (pair[0]["variant"], pair[1]["variant"]) if pair else None
    markdown = render_comparison(rows, claims, names, f"smoltune comparison `{folder.name}`")
    # SFT losses only: a DPO loss measures something else.
    curves = loss_curve_png({r["variant"]: r["losses"] for r in rows if not is_dpo(r)}, "Training loss by variant")
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
    # The same columns in every row of the artifact's table (a DPO row has more than an SFT one).
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "losses"))
    table = [{k: r.get(k) for k in columns} for r in rows]
    create_table_artifact(key=COMPARE_TABLE_KEY, table=table, description=description)
    return str(folder / "compare.md")
