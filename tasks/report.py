"""Prefect task: the run's own folder and artifacts. Runs every time (it is cheap and loads no model): links
the cached stage folders into the run folder, writes summary.json, report.md, report.html and the loss
curve, and publishes artifacts under stable keys so the Prefect UI keeps each one's history across runs."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from smoltune.files import atomic_write_bytes_stream, atomic_write_json, atomic_write_text
from smoltune.report.html import inline_images, png_data_uri, render_html
from smoltune.report.markdown import LOSS_CURVE, render_report
from smoltune.report.plots import loss_curve_png

REPORT_ARTIFACT_KEY = "smoltune-report"
METRICS_ARTIFACT_KEY = "smoltune-metrics"
LOSS_ARTIFACT_KEY = "smoltune-loss-curve"
DATA_DOCS_ARTIFACT_KEY = "smoltune-data-docs"


def metrics_rows(summary: dict) -> list[dict]:
    """The headline figures as table rows for the Prefect UI."""
    train, ev = summary["train"], summary["eval"]
    figures = {
        "trainable params": train["trainable_params"],
        "train seconds": train["train_seconds"],
        "real tokens/s": train["tokens_per_second"],
        "peak memory MiB": train["peak_memory_mb"],
        "saved MiB": summary["artifacts"]["saved_mb"],
        "final train loss": train["losses"][-1] if train["losses"] else None,
        "eval loss base": ev["eval_loss_base"],
        "eval loss tuned": ev["eval_loss_tuned"],
        "accuracy base": ev.get("accuracy_base"),
        "accuracy tuned": ev.get("accuracy_tuned"),
    }
    return [{"figure": name, "value": value} for name, value in figures.items()]


def link_stage_folders(run_dir: Path, stage_dirs: dict[str, str]) -> None:
    """run_dir/<name> -> the cached stage folder, so the run folder shows everything it used."""
    for name, target in stage_dirs.items():
        link = run_dir / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)


@task(name="report", cache_policy=NO_CACHE)
def report_task(summary: dict, generations_file: str, stage_dirs: dict[str, str]) -> str:
    run_dir = Path(summary["run_dir"])
    link_stage_folders(run_dir, stage_dirs)
    generations = json.loads(Path(generations_file).read_text())
    curve = loss_curve_png({summary["run_name"]: summary["train"]["losses"]})
    markdown = render_report(summary, generations)
    atomic_write_bytes_stream(run_dir / LOSS_CURVE, [curve])
    atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_json(run_dir / "generations.json", generations)
    atomic_write_text(run_dir / "report.md", markdown)
    atomic_write_text(run_dir / "report.html", render_html(markdown, {LOSS_CURVE: curve}, summary["run_name"]))
    description = f"smoltune run {run_dir.name}"
    # The UI cannot see the run folder: artifacts carry the loss curve inline.
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY, markdown=inline_images(markdown, {LOSS_CURVE: curve}), description=description
    )
    create_table_artifact(key=METRICS_ARTIFACT_KEY, table=metrics_rows(summary), description=description)
    loss_curve = f"![Loss curve]({png_data_uri(curve)})"
    create_markdown_artifact(key=LOSS_ARTIFACT_KEY, markdown=loss_curve, description=description)
    if summary["validation"].get("data_docs"):
        create_link_artifact(
            key=DATA_DOCS_ARTIFACT_KEY,
            link=Path(summary["validation"]["data_docs"]).as_uri(),
            link_text="Great Expectations Data Docs",
            description=description,
        )
    return str(run_dir / "report.md")
