"""The run report: a pure function from the run's summary to Markdown.

    python -c "import json; from smoltune.report.markdown import render_report; \
print(render_report(json.load(open('runs/<run>/summary.json')), []))"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from smoltune.report.preference import preference_section
from smoltune.report.tables import as_percent, harness_rows, markdown_table

LOSS_CURVE = "loss_curve.png"


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
    mode = f"lora (r={train['lora_rank']})" if train["mode"] == "lora" else train["mode"]
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


def _accuracy_section(ev: dict[str, Any]) -> str:
    if ev.get("accuracy_base") is None:
        return ""
    rows = [[f, as_percent(v["base"]), as_percent(v["tuned"])] for f, v in ev.get("accuracy_by_family", {}).items()]
    return f"\n\nAccuracy on {ev['checked_rows']} checkable held-out rows, by family:\n\n" + markdown_table(
        ["family", "base", "tuned"], rows
    )


def _model_section(model: dict[str, Any]) -> str:
    """Which weights were trained: the report must name them (source, hash, "dequantised Q4_1")."""
    rows = [
        ["source", model["source"]],
        ["weights", model.get("description", "")],
        ["sha256", model["sha256"]],
        *([["note", model["note"]]] if model.get("note") else []),
    ]
    return "## Model\n\n" + markdown_table(["field", "value"], rows)


def _data_section(data: dict[str, Any], validation: dict[str, Any]) -> str:
    """The data and its split, then the validation gate it passed (or the warnings it let through)."""
    rows = [
        ["source", data["source"]],
        *([["content", data["identity"]]] if data.get("identity") else []),
        *([["note", data["note"]]] if data.get("note") else []),
        ["training rows", data["train_rows"]],
        ["held-out rows", data["eval_rows"]],
        *([["fewer rows", data["split_note"]]] if data.get("split_note") else []),
    ]
    return "## Data\n\n" + markdown_table(["field", "value"], rows) + "\n\n" + _validation_section(validation)


def _training_rows(train: dict[str, Any], artifacts: dict[str, Any]) -> list[list[Any]]:
    losses = train.get("losses", [])
    percent = 100.0 * train["trainable_params"] / train["total_params"]
    processes = train.get("processes", 1)
    return [
        ["backend / mode", _backend_mode(train)],
        ["device", train.get("device", "?")],
        *([["processes", f"{processes} data-parallel (torchrun); peak memory is rank 0's"]] if processes > 1 else []),
        ["precision", _precision(train)],
        *([["packed attention", kernel]] if (kernel := _packed_attention(train)) else []),
        ["trainable parameters", f"{train['trainable_params']:,} of {train['total_params']:,} ({percent:.2f}%)"],
        ["steps", train["steps"]],
        ["training time", f"{train['train_seconds']:.1f} s"],
        ["real tokens / s", f"{train['tokens_per_second']:.1f}"],
        ["peak memory", f"{train['peak_memory_mb']:.0f} MiB"],
        ["saved size", f"{artifacts.get('saved_mb', 0):.2f} MiB"],
        ["final train loss", f"{losses[-1]:.4f}" if losses else "—"],
    ]


def _training_section(train: dict[str, Any], artifacts: dict[str, Any]) -> str:
    """The training figures, then the loss curve (a plot the report task writes beside it) and a sample of it."""
    text = "## Training\n\n" + markdown_table(["figure", "value"], _training_rows(train, artifacts))
    losses = train.get("losses", [])
    if not losses:
        return text
    loss_table = markdown_table(["step", "loss"], _loss_rows(losses))
    return f"{text}\n\n![Loss curve]({LOSS_CURVE})\n\nLoss by step:\n\n{loss_table}"


def _evaluation_rows(ev: dict[str, Any]) -> list[list[Any]]:
    def pair(metric: str, show: Callable[[float | None], str]) -> list[str]:
        return [show(ev.get(f"{metric}_base")), show(ev.get(f"{metric}_tuned"))]

    return [
        ["eval loss", f"{ev['eval_loss_base']:.4f}", f"{ev['eval_loss_tuned']:.4f}"],
        ["accuracy (checkable rows)", *pair("accuracy", as_percent)],
        ["exact match", *pair("exact_match", as_percent)],
        ["normalised match", *pair("normalised_match", as_percent)],
        ["ROUGE-L (F1)", *pair("rouge_l", _ratio)],
        [
            "perplexity",
            f"{ev.get('perplexity_base', float('nan')):.2f}",
            f"{ev.get('perplexity_tuned', float('nan')):.2f}",
        ],
    ]


def _evaluation_section(ev: dict[str, Any], eval_rows: int) -> str:
    """Base against tuned on the held-out rows, whether the adapter helped, and accuracy by task family."""
    table = markdown_table(["metric", "base", "tuned"], _evaluation_rows(ev))
    delta = ev["eval_loss_tuned"] - ev["eval_loss_base"]
    verdict = (
        f"The adapter {'lowered' if delta < 0 else 'did not lower'} the held-out loss "
        f"({delta:+.4f} over {eval_rows} rows never seen in training)."
    )
    return f"## Held-out evaluation\n\n{table}\n\n{verdict}" + _evaluation_time(ev) + _accuracy_section(ev)


def _harness_section(ev: dict[str, Any]) -> str:
    """lm-evaluation-harness figures (eval.harness), base vs tuned with standard errors, and the commands that
    measure them again; empty when the harness did not run."""
    harness = ev.get("harness")
    if not harness:
        return ""
    header = ["task", "metric", "base", "± stderr", "tuned", "± stderr", "examples"]
    settings = f"limit {harness.get('limit') or 'none'}, few-shot {harness.get('num_fewshot') or 'task default'}"
    commands = "\n".join(f"# {label}\n{command}" for label, command in harness.get("commands", {}).items())
    return (
        "## lm-evaluation-harness\n\n"
        + markdown_table(header, harness_rows(harness))
        + f"\n\nMeasured by lm-evaluation-harness {harness['lm_eval_version']} ({settings}) in "
        + f"{harness['seconds']:.1f} s, in {ev.get('eval_precision', 'fp32')}; ↑/↓: higher/lower is better. "
        + f"The same figures from the harness's own CLI (from the folder the run started in):\n\n```\n{commands}\n```"
    )


def _generations_section(generations: list[dict[str, str]]) -> str:
    """The sample prompts answered greedily by base and tuned; empty without any."""
    if not generations:
        return ""
    answers = ("base", "sft", "dpo") if "dpo" in generations[0] else ("base", "tuned")
    rows = [
        [g["instruction"] + (f" — {g['input']}" if g.get("input") else ""), *(g[a] for a in answers)]
        for g in generations
    ]
    header = ["prompt", *(a.upper() if a in ("sft", "dpo") else a for a in answers)]
    return "## Prompts (greedy)\n\n" + markdown_table(header, rows)


def _timings_section(timings: dict[str, float]) -> str:
    if not timings:
        return ""
    rows = [[stage, f"{seconds:.1f}"] for stage, seconds in timings.items()]
    return "## Stage wall time\n\n" + markdown_table(["stage", "seconds"], rows)


def _artifacts_section(summary: dict[str, Any]) -> str:
    """Where the outputs are, and for an adapter the command that serves it."""
    artifacts = summary.get("artifacts", {})
    saved = [
        f"- {name}: `{artifacts[name]}`"
        for name in ("adapter_dir", "model_dir", "merged_dir", "gguf_file")
        if name in artifacts
    ]
    if artifacts.get("adapter_dir"):
        saved.append(
            f"- serve it: `smoltune serve --adapter {summary.get('run_name', 'tuned')}={summary.get('run_dir', '.')}`"
        )
    return "## Artifacts\n\n" + "\n".join(saved)


def _config_section(config: dict[str, Any] | None) -> str:
    """The whole configuration as YAML, in its own field order, so the run can be repeated."""
    if not config:
        return ""
    return f"## Run configuration\n\n```yaml\n{yaml.safe_dump(config, sort_keys=False)}```"


def render_report(summary: dict[str, Any], generations: list[dict[str, str]]) -> str:
    """Markdown report of one run. Pure: same inputs, same text."""
    sections = [
        f"# smoltune run `{summary.get('run_name', '?')}`",
        _model_section(summary["model"]),
        _data_section(summary["data"], summary.get("validation", {})),
        _training_section(summary["train"], summary.get("artifacts", {})),
        _evaluation_section(summary["eval"], summary["data"]["eval_rows"]),
        _harness_section(summary["eval"]),
        _generations_section(generations),
        preference_section(summary["preference"]) if summary.get("preference") else "",
        promotion_section(summary["promotion"]) if summary.get("promotion") else "",
        _timings_section(summary.get("stage_seconds") or {}),
        _artifacts_section(summary),
        _config_section(summary.get("config")),
    ]
    # A section with nothing to say ("") leaves no gap.
    return "\n\n".join(section for section in sections if section) + "\n"
