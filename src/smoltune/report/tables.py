"""Markdown tables and figures as the report shows them (shared by the report's sections). Pure."""

from __future__ import annotations

import html
from typing import Any


def _cell(text: Any, limit: int = 300) -> str:
    """A value safe inside a Markdown table cell: one line, HTML, pipes and link brackets escaped, long text cut.
    Cells hold prompts and generations, which are anyone's text: `<img onerror=...>` must show as text, not run,
    and `[x](javascript:...)` or `![](http://remote/)` must not become a live link or a fetched image wherever
    the Markdown is shown (the Prefect UI renders it too)."""
    value = " ".join(str(text).split())
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    escaped = html.escape(value, quote=False).replace("|", "\\|")
    return escaped.replace("[", "\\[").replace("]", "\\]") or "—"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def as_percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _figure(value: float | None, stderr: bool = False) -> str:
    if value is None:
        return "—"
    return f"± {value:.4f}" if stderr else f"{value:.4f}"


def harness_rows(harness: dict[str, Any]) -> list[list[Any]]:
    """lm-evaluation-harness scores (HarnessFigures as JSON) as rows: task, metric, base, ± base, tuned, ± tuned,
    examples; the metric marked ↑ or ↓ where the harness says which direction is better."""
    rows = []
    for s in harness.get("scores", []):
        arrow = {True: " ↑", False: " ↓"}.get(s.get("higher_is_better"), "")
        rows.append(
            [
                s["task"],
                s["metric"] + arrow,
                _figure(s.get("base")),
                _figure(s.get("base_stderr"), stderr=True),
                _figure(s.get("tuned")),
                _figure(s.get("tuned_stderr"), stderr=True),
                s.get("samples") if s.get("samples") is not None else "—",
            ]
        )
    return rows
