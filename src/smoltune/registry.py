"""Promotion: a file-based registry of the best adapter per (model, dataset), and the gate that updates it.

    python -c "from smoltune.registry import read_registry; print(read_registry('runs/registry.json'))"

A run is promoted only when its held-out metric strictly beats the current entry's: accuracy (higher is
better) when the data has checkable answers, otherwise eval loss (lower is better). Updates take a file
lock and replace the file atomically, so concurrent runs never lose or corrupt an entry.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from smoltune.files import atomic_write_json


@dataclass
class PromotionDecision:
    promoted: bool
    key: str
    metric: str
    value: float
    current_value: float | None
    current_run: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promotion_metric(evaluation: dict[str, Any]) -> tuple[str, float, bool]:
    """(name, value, higher is better) of the figure that decides promotion."""
    if evaluation.get("accuracy_tuned") is not None:
        return "accuracy_tuned", float(evaluation["accuracy_tuned"]), True
    return "eval_loss_tuned", float(evaluation["eval_loss_tuned"]), False


def registry_key(model_source: str, data_source: str) -> str:
    return f"{model_source} | {data_source}"


def read_registry(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    return json.loads(file.read_text()) if file.is_file() else {}


def promote(registry_file: str | Path, key: str, run_name: str, output_dir: str, evaluation: dict) -> PromotionDecision:
    """Record `output_dir` as the best for `key` if its metric beats the current entry; report the decision."""
    metric, value, higher_is_better = promotion_metric(evaluation)
    path = Path(registry_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        registry = read_registry(path)
        current = registry.get(key)
        if current is None:
            promoted, reason = True, "no adapter registered yet for this model and dataset"
        elif current["metric"] != metric:
            promoted, reason = True, f"the current entry was measured by {current['metric']}, not comparable"
        else:
            better = value > current["value"] if higher_is_better else value < current["value"]
            direction = "higher" if higher_is_better else "lower"
            promoted = better
            reason = f"{metric} {value:.4f} vs current {current['value']:.4f} ({direction} is better)"
        if promoted:
            registry[key] = {"run": run_name, "output_dir": output_dir, "metric": metric, "value": value}
            atomic_write_json(path, registry)
    return PromotionDecision(
        promoted=promoted,
        key=key,
        metric=metric,
        value=value,
        current_value=current["value"] if current else None,
        current_run=current["run"] if current else None,
        reason=reason,
    )
