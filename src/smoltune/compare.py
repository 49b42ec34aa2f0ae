"""The LoRA-vs-full comparison: variant configs, the measured table, and the seed's claims checked.

    smoltune compare --config configs/compare.yaml

`configs/compare.yaml` holds a whole pipeline job plus `variants`: each a name and `--set`-style overrides
(`train.mode`, `train.lora.r`, ...). All variants share the same fetched, validated and prepared data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from smoltune.config import ConfigError, PipelineConfig, build_config


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$", description="Folder-safe name, e.g. lora-r16.")
    set: dict[str, Any] = Field(default_factory=dict, description="Overrides, e.g. {train.lora.r: 256}.")


class CompareConfig(BaseModel):
    """The shared job and the variants trained on it."""

    model_config = ConfigDict(extra="forbid")

    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    variants: list[Variant] = Field(min_length=1)


def variant_config(compare: CompareConfig, variant: Variant) -> PipelineConfig:
    """The shared job with the variant's overrides applied (validated like a job of its own)."""
    from smoltune.config import apply_overrides

    overrides = [
        f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}" for key, value in variant.set.items()
    ]
    data = apply_overrides(compare.pipeline.model_dump(mode="json"), overrides)
    return build_config(data, source=f"variant {variant.name}")


def load_compare_config(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    """Read a compare YAML: pipeline sections at the top level, plus `variants`."""
    from smoltune.config import apply_overrides

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError([f"cannot read: {err}"], str(path)) from None
    variants = data.pop("variants", None)
    if not isinstance(variants, list) or not variants:
        raise ConfigError(["'variants' must list at least one {name, set} entry"], str(path))
    pipeline = build_config(apply_overrides(data, overrides or []), str(path))
    compare = CompareConfig(pipeline=pipeline, variants=[Variant.model_validate(v) for v in variants])
    names = [v.name for v in compare.variants]
    if len(set(names)) != len(names):
        raise ConfigError([f"variant names must be unique, got {names}"], str(path))
    for variant in compare.variants:
        variant_config(compare, variant)  # every variant must be a valid job before anything runs
    return compare


def comparison_row(name: str, summary_train: dict, evaluation: dict, saved_mb: float) -> dict[str, Any]:
    """The figures of one variant, as the table and the claims use them."""
    losses = summary_train["losses"]
    return {
        "variant": name,
        "mode": summary_train["mode"],
        "rank": summary_train["rank"],
        "trainable_params": summary_train["trainable_params"],
        "total_params": summary_train["total_params"],
        "train_seconds": summary_train["train_seconds"],
        "tokens_per_second": summary_train["tokens_per_second"],
        "peak_memory_mb": summary_train["peak_memory_mb"],
        "saved_mb": saved_mb,
        "final_train_loss": losses[-1] if losses else None,
        "eval_loss": evaluation["eval_loss_tuned"],
        "accuracy": evaluation.get("accuracy_tuned"),
        "losses": losses,
    }


def _share(part: float, whole: float) -> float:
    return 1.0 - part / whole if whole else float("nan")


def check_claims(lora: dict[str, Any], full: dict[str, Any]) -> list[dict[str, Any]]:
    """The seed's claims for LoRA against full fine-tuning, each with the measured figure and a verdict."""
    if lora.get("accuracy") is not None and full.get("accuracy"):
        quality, basis = lora["accuracy"] / full["accuracy"], "held-out accuracy ratio"
    else:
        quality, basis = full["eval_loss"] / lora["eval_loss"], "eval-loss ratio (full / LoRA)"
    faster = full["train_seconds"] / lora["train_seconds"] - 1.0
    checks = [
        ("95% fewer parameters", _share(lora["trainable_params"], full["trainable_params"]), 0.95, "fewer trainable"),
        ("20–30% faster", faster, 0.20, "faster training"),
        ("90% smaller", _share(lora["saved_mb"], full["saved_mb"]), 0.90, "smaller on disk"),
        ("40% less memory", _share(lora["peak_memory_mb"], full["peak_memory_mb"]), 0.40, "less peak memory"),
        ("95–100% of full quality", quality, 0.95, basis),
    ]
    return [
        {"claim": claim, "measured": value, "threshold": threshold, "holds": round(value, 9) >= threshold, "what": what}
        for claim, value, threshold, what in checks
    ]


def pick_pair(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(LoRA r=16 or the smallest-rank LoRA, full fine-tuning or else the largest-rank LoRA), or None."""
    loras = sorted((r for r in rows if r["mode"] == "lora"), key=lambda r: r["rank"])
    fulls = [r for r in rows if r["mode"] == "full"]
    if not loras or (not fulls and len(loras) < 2):
        return None
    lora = next((r for r in loras if r["rank"] == 16), loras[0])
    return lora, fulls[0] if fulls else loras[-1]
