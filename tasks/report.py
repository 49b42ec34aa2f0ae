"""Prefect task: write summary.json and report.md, and publish the report as a Markdown artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from smoltune.files import atomic_write_json, atomic_write_text
from smoltune.report import render_report

REPORT_ARTIFACT_KEY = "smoltune-report"


@task(name="report", cache_policy=NO_CACHE)
def report_task(summary: dict, generations: list[dict]) -> str:
    run_dir = Path(summary["run_dir"])
    markdown = render_report(summary, generations)
    atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_text(run_dir / "report.md", markdown)
    create_markdown_artifact(key=REPORT_ARTIFACT_KEY, markdown=markdown, description=f"smoltune run {run_dir.name}")
    return str(run_dir / "report.md")
