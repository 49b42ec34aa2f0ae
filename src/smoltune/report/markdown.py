"""The run report: a pure function from the run's summary to Markdown.

    python -c "import json; from smoltune.report.markdown import render_report; \
print(render_report(json.load(open('runs/<run>/summary.json')), []))"
"""

from __future__ import annotations

import html
from typing import Any

import yaml

LOSS_CURVE = "loss_curve.png"


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


def _loss_rows(losses: list[float], max_rows: int = 12) -> list[list[Any]]:
    """Every loss when there are few, otherwise evenly spaced steps including the first and the last."""
    if len(losses) <= max_rows:
        picks = list(range(len(losses)))
    else:
        picks = sorted({round(i * (len(losses) - 1) / (max_rows - 1)) for i in range(max_rows)})
    return [[i + 1, f"{losses[i]:.4f}"] for i in picks]


def _validation_section(validation: dict[str, Any]) -> str:
    verdict = "passed" if validation.get("success") else "FAILED"
    checks = validation.get("checks", [])
    rows = [
        [c["name"], c["severity"], "pass" if c["success"] else "fail", c.get("unexpected_count", 0)] for c in checks
    ]
    text = f"Great Expectations suite {verdict} on {validation.get('row_count', '?')} rows."
    warnings = [c for c in checks if not c["success"] and c["severity"] == "warning"]
    if warnings:
        text += "\n\n**Warnings** (training went ahead):\n\n" + "\n".join(
            f"- {c['name']}: {c.get('unexpected_count', 0)} rows, e.g. {c.get('example_rows', [])}" for c in warnings
        )
    if validation.get("data_docs"):
        text += f"\n\nData Docs: `{validation['data_docs']}`"
    return text + ("\n\n" + markdown_table(["expectation", "severity", "result", "failing rows"], rows) if rows else "")


def _evaluation_time(ev: dict) -> str:
    """' Evaluated in 24.8 s (0.25 s per held-out row, base and tuned, in bf16).' when the record has the time."""
    if not ev.get("eval_seconds") or not ev.get("eval_rows"):
        return ""
    took = f"{ev['eval_seconds']:.1f} s ({ev['eval_seconds'] / ev['eval_rows']:.2f} s per held-out row"
    return f" Evaluated in {took}, base and tuned, in {ev.get('eval_precision', 'fp32')})."


def _packed_attention(train: dict) -> str | None:
    """How packed rows attended (smoltune.train.segment_kernels) and why; None when rows were not packed."""
    settings = train.get("settings", {})
    fast = settings.get("fast_path", {})
    if not fast.get("padding_free"):
        return None
    return f"{fast.get('segment_kernel', 'rows')} ({settings.get('segment_kernel', 'per-row')})"


def _precision(train: dict) -> str:
    """'bf16 (auto on CPU: bf16 matmuls 4.4x fp32 here ...; measured GFLOP/s fp32 188, bf16 823)'."""
    settings = train.get("settings", {})
    measured = settings.get("matmul_gflops") or {}
    figures = ", ".join(f"{name} {rate:,.0f}" for name, rate in measured.items())
    reason = settings.get("precision", "")
    return f"{train.get('precision', 'fp32')} ({reason}" + (f"; measured GFLOP/s {figures}" if figures else "") + ")"


def _backend_mode(train: dict[str, Any]) -> str:
    mode = f"lora (r={train['rank']})" if train["mode"] == "lora" else train["mode"]
    reason = f" — {train['backend_reason']}" if train.get("backend_reason") else ""
    resumed = f"; resumed from step {train['resumed_from_step']}" if train.get("resumed_from_step") else ""
    return f"{train['backend']} / {mode}{reason}{resumed}"


def promotion_section(promotion: dict[str, Any]) -> str:
    """The promotion decision: the figure against the registered one, and entries it was not compared with."""
    verdict = "**Promoted**" if promotion["promoted"] else "**Not promoted**"
    current = promotion["current_value"]
    rows = [
        ["this run", f"{promotion['value']:.4f}"],
        [
            f"registered ({promotion['current_run']})" if current is not None else "registered",
            "—" if current is None else f"{current:.4f}",
        ],
    ]
    text = (
        f"## Promotion\n\n{verdict} for `{promotion['key']}` by {promotion['metric']}: {promotion['reason']}.\n\n"
        + markdown_table(["adapter", promotion["metric"]], rows)
    )
    others = promotion.get("not_compared") or []
    if others:
        text += "\n\nNot compared with:\n\n" + "\n".join(f"- {line}" for line in others)
    return text


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def as_percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _accuracy_section(ev: dict[str, Any]) -> str:
    if ev.get("accuracy_base") is None:
        return ""
    rows = [[f, as_percent(v["base"]), as_percent(v["tuned"])] for f, v in ev.get("accuracy_by_family", {}).items()]
    return f"\n\nAccuracy on {ev['checked_rows']} checkable held-out rows, by family:\n\n" + markdown_table(
        ["family", "base", "tuned"], rows
    )


def render_report(summary: dict[str, Any], generations: list[dict[str, str]]) -> str:
    """Markdown report of one run. Pure: same inputs, same text."""
    model, data, train, ev = summary["model"], summary["data"], summary["train"], summary["eval"]
    artifacts = summary.get("artifacts", {})
    percent = 100.0 * train["trainable_params"] / train["total_params"]
    delta = ev["eval_loss_tuned"] - ev["eval_loss_base"]
    losses = train.get("losses", [])
    sections = [
        f"# smoltune run `{summary.get('run_name', '?')}`",
        "## Model\n\n"
        + markdown_table(
            ["field", "value"],
            [
                ["source", model["source"]],
                ["weights", model.get("description", "")],
                ["sha256", model["sha256"]],
                *([["note", model["note"]]] if model.get("note") else []),
            ],
        ),
        "## Data\n\n"
        + markdown_table(
            ["field", "value"],
            [
                ["source", data["source"]],
                *([["content", data["identity"]]] if data.get("identity") else []),
                *([["note", data["note"]]] if data.get("note") else []),
                ["training rows", data["train_rows"]],
                ["held-out rows", data["eval_rows"]],
                *([["fewer rows", data["split_note"]]] if data.get("split_note") else []),
            ],
        )
        + "\n\n"
        + _validation_section(summary.get("validation", {})),
        "## Training\n\n"
        + markdown_table(
            ["figure", "value"],
            [
                ["backend / mode", _backend_mode(train)],
                ["device", train.get("device", "?")],
                *(
                    [["processes", f"{train['processes']} data-parallel (torchrun); peak memory is rank 0's"]]
                    if train.get("processes", 1) > 1
                    else []
                ),
                ["precision", _precision(train)],
                *([["packed attention", kernel]] if (kernel := _packed_attention(train)) else []),
                [
                    "trainable parameters",
                    f"{train['trainable_params']:,} of {train['total_params']:,} ({percent:.2f}%)",
                ],
                ["steps", train["steps"]],
                ["training time", f"{train['train_seconds']:.1f} s"],
                ["real tokens / s", f"{train['tokens_per_second']:.1f}"],
                ["peak memory", f"{train['peak_memory_mb']:.0f} MiB"],
                ["saved size", f"{artifacts.get('saved_mb', 0):.2f} MiB"],
                ["final train loss", f"{losses[-1]:.4f}" if losses else "—"],
            ],
        )
        + (
            f"\n\n![Loss curve]({LOSS_CURVE})\n\nLoss by step:\n\n"
            + markdown_table(["step", "loss"], _loss_rows(losses))
            if losses
            else ""
        ),
        "## Held-out evaluation\n\n"
        + markdown_table(
            ["metric", "base", "tuned"],
            [
                ["eval loss", f"{ev['eval_loss_base']:.4f}", f"{ev['eval_loss_tuned']:.4f}"],
                [
                    "accuracy (checkable rows)",
                    as_percent(ev.get("accuracy_base")),
                    as_percent(ev.get("accuracy_tuned")),
                ],
                ["exact match", as_percent(ev.get("exact_match_base")), as_percent(ev.get("exact_match_tuned"))],
                [
                    "normalised match",
                    as_percent(ev.get("normalised_match_base")),
                    as_percent(ev.get("normalised_match_tuned")),
                ],
                ["ROUGE-L (F1)", _ratio(ev.get("rouge_l_base")), _ratio(ev.get("rouge_l_tuned"))],
                [
                    "perplexity",
                    f"{ev.get('perplexity_base', float('nan')):.2f}",
                    f"{ev.get('perplexity_tuned', float('nan')):.2f}",
                ],
            ],
        )
        + f"\n\nThe adapter {'lowered' if delta < 0 else 'did not lower'} the held-out loss "
        f"({delta:+.4f} over {data['eval_rows']} rows never seen in training)."
        + _evaluation_time(ev)
        + _accuracy_section(ev),
    ]
    if generations:
        rows = [
            [g["instruction"] + (f" — {g['input']}" if g.get("input") else ""), g["base"], g["tuned"]]
            for g in generations
        ]
        sections.append("## Prompts (greedy)\n\n" + markdown_table(["prompt", "base", "tuned"], rows))
    if summary.get("promotion"):
        sections.append(promotion_section(summary["promotion"]))
    timings = summary.get("stage_seconds") or {}
    if timings:
        sections.append(
            "## Stage wall time\n\n"
            + markdown_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()])
        )
    saved = [
        f"- {name}: `{artifacts[name]}`"
        for name in ("adapter_dir", "model_dir", "merged_dir", "gguf_file")
        if name in artifacts
    ]
    if artifacts.get("adapter_dir"):
        saved.append(
            f"- serve it: `smoltune serve --adapter {summary.get('run_name', 'tuned')}={summary.get('run_dir', '.')}`"
        )
    sections.append("## Artifacts\n\n" + "\n".join(saved))
    if summary.get("config"):
        config_yaml = yaml.safe_dump(summary["config"], sort_keys=False)
        sections.append(f"## Run configuration\n\n```yaml\n{config_yaml}```")
    return "\n\n".join(sections) + "\n"
