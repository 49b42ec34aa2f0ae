"""Markdown tables and figures as the report shows them (shared by the report's sections). Pure."""

from __future__ import annotations

import html
from typing import Any


def _cell(text: Any, limit: int = 300) -> str:
    """A value safe inside a Markdown table cell: one line, HTML and pipes escaped, long text cut. Cells hold
    prompts and generations, which are anyone's text: `<img onerror=...>` must show as text, not run."""
    value = " ".join(str(text).split())
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return html.escape(value, quote=False).replace("|", "\\|") or "—"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def as_percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"
