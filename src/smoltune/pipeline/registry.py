"""Promotion: a file-based registry of the best adapter per (model, dataset, held-out set, metric), and the
gate that updates it.

    python -c "from smoltune.pipeline.registry import read_registry; print(read_registry('runs/registry.json'))"

A run is promoted only when its held-out metric strictly beats the current entry's: accuracy (higher is
better) when the data has checkable answers, otherwise eval loss (lower is better). Figures measured on
different held-out rows are not comparable (one row fewer changes an accuracy), so the held-out set's hash is
part of the key: such runs never compete, and the decision lists the entries it did not compare and why.
Updates take a file lock and replace the file atomically, so concurrent runs never lose or corrupt an entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filelock import FileLock

from smoltune.files import atomic_write_json
from smoltune.records import EvalFigures, PromotionDecision

SEPARATOR = " | "


def promotion_metric(figures: EvalFigures) -> tuple[str, float, bool]:
    """(name, value, higher is better) of the figure that decides promotion."""
    if figures.accuracy_tuned is not None:
        return "accuracy_tuned", float(figures.accuracy_tuned), True
    return "eval_loss_tuned", float(figures.eval_loss_tuned), False


def registry_key(model_source: str, data_source: str, heldout_sha256: str, metric: str) -> str:
    return SEPARATOR.join([model_source, data_source, f"held-out {heldout_sha256[:12]}", metric])


def _same_job(key: str, other: str) -> bool:
    """Two keys for the same model and data source (whatever their held-out set or metric)."""
    return key.split(SEPARATOR)[:2] == other.split(SEPARATOR)[:2]


def read_registry(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    return json.loads(file.read_text()) if file.is_file() else {}


def decide(metric: str, value: float, higher_is_better: bool, current: dict | None) -> tuple[bool, str]:
    """(promoted, reason) against the current entry of the same key. Pure."""
    if current is None:
        return True, "no adapter registered yet for this model, data and held-out set"
    better = value > current["value"] if higher_is_better else value < current["value"]
    direction = "higher" if higher_is_better else "lower"
    return better, f"{metric} {value:.4f} vs current {current['value']:.4f} ({direction} is better)"


def promote(
    registry_file: str | Path,
    model_source: str,
    data_source: str,
    run_name: str,
    output_dir: str,
    figures: EvalFigures,
    heldout_sha256: str,
) -> PromotionDecision:
    """Record `output_dir` as the best for its key if its metric beats the current entry; report the decision."""
    metric, value, higher_is_better = promotion_metric(figures)
    key = registry_key(model_source, data_source, heldout_sha256, metric)
    path = Path(registry_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        registry = read_registry(path)
        current = registry.get(key)
        promoted, reason = decide(metric, value, higher_is_better, current)
        if promoted:
            registry[key] = {
                "run": run_name,
                "output_dir": output_dir,
                "metric": metric,
                "value": value,
                "heldout_sha256": heldout_sha256,
            }
            atomic_write_json(path, registry)
    not_compared = [
        f"{entry['run']} ({entry['metric']} {entry['value']:.4f}): measured on other held-out rows "
        f"({entry.get('heldout_sha256', '?')[:12]}) or by another metric, so not comparable"
        for other, entry in sorted(registry.items())
        if other != key and _same_job(key, other)
    ]
    return PromotionDecision(
        promoted=promoted,
        key=key,
        metric=metric,
        value=value,
        current_value=current["value"] if current else None,
        current_run=current["run"] if current else None,
        reason=reason,
        not_compared=not_compared,
    )


def notify_server(server_url: str, name: str, adapter_dir: str, timeout_s: float = 120) -> str:
    """Hand a promoted adapter to a running `smoltune serve` (POST /v1/adapters, `output.notify_server`);
    returns what it answered."""
    import httpx

    try:
        response = httpx.post(
            f"{server_url.rstrip('/')}/v1/adapters", json={"name": name, "path": adapter_dir}, timeout=timeout_s
        )
    except httpx.HTTPError as err:
        return f"could not reach {server_url}: {type(err).__name__}"
    return f"{server_url} answered {response.status_code}: {response.text[:200]}"
