"""What one MLflow run holds, built from a finished run's records: pure data, no MLflow import.

    python -c "from smoltune.config import PipelineConfig; from smoltune.tracking.content import config_params; \
print(len(config_params(PipelineConfig())))"

Flattening, limits and key cleaning are written here by hand because MLflow's own helpers for them live in
private modules (`mlflow.utils.validation`, `mlflow.utils.autologging_utils`) that change between releases,
and because the 500-character rule is this project's choice, not MLflow 3.17's (see PARAM_VALUE_LIMIT).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from smoltune.config import PipelineConfig
from smoltune.records import EvalFigures, PreferenceFigures, PromotionDecision, TrainResult
from smoltune.redaction import redact
from smoltune.report.compare import COMPARE_CURVES
from smoltune.report.markdown import LOSS_CURVE

# MLflow 3.17 accepts 6000 characters per parameter value, but older servers (and some hosted ones) reject
# anything over 500, failing the whole batch: the lowest limit keeps every server working. The full config
# travels anyway, untruncated, as the run's config.yaml artifact.
PARAM_VALUE_LIMIT = 500
# MLflow's log_batch limits: 100 params or tags, 1000 metrics per request.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# Files of the run folder logged as artifacts, where present (written by the report tasks).
RUN_FILES = ("report.md", "report.html", LOSS_CURVE, "summary.json", "config.yaml", "generations.json")
COMPARE_FILES = ("compare.md", "compare.html", COMPARE_CURVES, "compare.json", "config.yaml")
SWEEP_FILES = ("sweep.json", "config.yaml")
# Characters MLflow refuses in a param or metric name (its rule on Linux): user-named keys such as
# data.columns' are cleaned instead of failing the batch.
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")

T = TypeVar("T")


@dataclass(frozen=True)
class TrackedRun:
    """One MLflow run: what to log, and the runs nested under it (compare variants, sweep trials)."""

    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    steps: list[tuple[str, float, int]] = field(default_factory=list)  # (key, value, step)
    tags: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    weights_dir: str | None = None  # the adapter (or fully fine-tuned model) folder, logged as an MLflow model
    weights_name: str = "adapter"
    promoted: bool = False
    children: list[TrackedRun] = field(default_factory=list)


def clean_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)


def _value_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = redact(text)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 1] + "…"


def flatten_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys (`train.lora.r`), every value as text: secrets redacted, at most
    PARAM_VALUE_LIMIT characters. Lists stay one JSON value; an empty dict is kept as `{}`."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = clean_key(f"{prefix}{key}")
        if isinstance(value, dict) and value:
            flat |= flatten_params(value, f"{name}.")
        else:
            flat[name] = _value_text(value)
    return flat


def config_params(config: PipelineConfig) -> dict[str, str]:
    """The job's whole configuration as MLflow params."""
    return flatten_params(config.model_dump(mode="json"))


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of at most `size` (MLflow's per-request limits)."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _finite(value: Any) -> bool:
    # A NaN is how the trainer records a norm it did not track (instrumentation.StepLog); MLflow would plot it
    # as a gap at best, so an absent point says the same without relying on a server's NaN handling.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def step_metrics(result: TrainResult, prefix: str = "train/") -> list[tuple[str, float, int]]:
    """Every logged optimizer step's figures (loss, learning rate, grad norm, tokens seen) with its step."""
    return [
        (f"{prefix}{key}", float(value), int(record["step"]))
        for record in result.step_log
        for key, value in record.items()
        if key != "step" and _finite(value)
    ]


def train_metrics(result: TrainResult, prefix: str = "train/") -> dict[str, float]:
    """The training's totals: speed, memory, size."""
    figures = {
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "tokens_seen": result.tokens_seen,
        "tokens_per_second": result.tokens_per_second,
        "peak_memory_mb": result.peak_memory_mb,
        "trainable_params": result.trainable_params,
        "trainable_percent": result.trainable_percent,
        "saved_mb": result.saved_mb,
        "final_loss": result.losses[-1] if result.losses else None,
    }
    return {f"{prefix}{k}": float(v) for k, v in figures.items() if _finite(v)}


def eval_metrics(figures: EvalFigures, prefix: str = "eval/") -> dict[str, float]:
    """Base and tuned figures on the held-out rows (accuracy per family as eval/accuracy_by_family/<f>/<m>), and
    the lm-evaluation-harness scores as eval/harness/<task>/<metric>/{base,tuned,base_stderr,tuned_stderr}."""
    data = figures.model_dump(mode="json")
    families = data.pop("accuracy_by_family")
    harness = data.pop("harness", None) or {}
    metrics = {f"{prefix}{k}": float(v) for k, v in data.items() if _finite(v)}
    for family, values in families.items():
        metrics |= {clean_key(f"{prefix}accuracy_by_family/{family}/{k}"): float(v) for k, v in values.items()}
    for score in harness.get("scores", []):
        name = f"{prefix}harness/{score['task']}/{score['metric']}"
        metrics |= {
            clean_key(f"{name}/{k}"): float(score[k])
            for k in ("base", "tuned", "base_stderr", "tuned_stderr")
            if _finite(score.get(k))
        }
    return metrics


def run_tags(result: TrainResult, promotion: PromotionDecision | None) -> dict[str, str]:
    """How the run trained, and whether it was promoted (searchable in MLflow: tags.`smoltune.promoted`)."""
    tags = {
        "smoltune.backend": result.backend,
        "smoltune.mode": result.mode,
        "smoltune.precision": result.precision,
        "smoltune.device": result.device,
    }
    if promotion is not None:
        tags |= {"smoltune.promoted": str(promotion.promoted).lower(), "smoltune.promotion": redact(promotion.reason)}
    return tags


def trained_run(
    name: str,
    config: PipelineConfig,
    result: TrainResult,
    figures: EvalFigures,
    promotion: PromotionDecision | None = None,
    files: Sequence[str | Path] = (),
) -> TrackedRun:
    """The run of one training: its config, curves, figures, files and weights."""
    return TrackedRun(
        name=name,
        params=config_params(config),
        metrics=train_metrics(result) | eval_metrics(figures),
        steps=step_metrics(result),
        tags=run_tags(result, promotion),
        files=[str(f) for f in files if Path(f).is_file()],
        weights_dir=result.output_dir,
        weights_name="adapter" if result.mode == "lora" else "model",
        promoted=bool(promotion and promotion.promoted),
    )


def run_folder_files(run_dir: str | Path, names: Sequence[str] = RUN_FILES) -> list[str]:
    """The run folder's files worth keeping in MLflow, those that exist."""
    return [str(Path(run_dir) / n) for n in names if (Path(run_dir) / n).is_file()]


def preference_run(
    name: str,
    config: PipelineConfig,
    sft: TrainResult,
    dpo: TrainResult,
    figures: EvalFigures,
    preference: PreferenceFigures,
    promotion: PromotionDecision | None,
    files: Sequence[str | Path] = (),
) -> TrackedRun:
    """A preference flow's run: the DPO adapter's (the run's adapter), with the SFT curves beside its own and the
    DPO-vs-SFT figures (reward accuracy, margin) under preference/."""
    run = trained_run(name, config, dpo, figures, promotion, files)
    extra = _numbers(preference.model_dump(mode="json"), "preference")
    return replace(run, steps=run.steps + step_metrics(sft, "sft/"), metrics=run.metrics | extra)


def _numbers(data: Any, name: str) -> dict[str, float]:
    """Every finite number in nested figures, named by its path: preference/eval_loss/sft,
    preference/reward_accuracy_by_kind/own_wrong/pairs."""
    if isinstance(data, dict):
        return {path: v for key, value in data.items() for path, v in _numbers(value, f"{name}/{key}").items()}
    return {name: float(data)} if _finite(data) else {}


def parent_run(
    name: str, config: PipelineConfig, files: Sequence[str | Path], children: list[TrackedRun]
) -> TrackedRun:
    """The run of a compare or sweep flow: the shared config and report, the variants or trials nested under it."""
    return TrackedRun(
        name=name,
        params=config_params(config),
        files=[str(f) for f in files if Path(f).is_file()],
        children=children,
    )
