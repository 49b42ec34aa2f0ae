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

from smoltune.errors import ConfigError
from smoltune.files import atomic_write_json
from smoltune.harness_files import HARNESS_METRIC_PREFIX, NO_FILTER, parse_metric
from smoltune.records import EvalFigures, PromotionDecision
from smoltune.redaction import redact

SEPARATOR = " | "


def promotion_metric(figures: EvalFigures, metric: str = "auto") -> tuple[str, float, bool]:
    """(name, value, higher is better) of the figure that decides promotion: `eval.metric`, where 'auto' is
    held-out accuracy, else eval loss, and 'harness:TASK/METRIC' the tuned model's harness figure."""
    wanted = parse_metric(metric)
    if wanted is not None:
        return _harness_metric(figures, metric, *wanted)
    if figures.accuracy_tuned is not None:
        return "accuracy_tuned", float(figures.accuracy_tuned), True
    return "eval_loss_tuned", float(figures.eval_loss_tuned), False


def _harness_metric(
    figures: EvalFigures, metric: str, task: str, name: str, filter_name: str
) -> tuple[str, float, bool]:
    label = name if filter_name == NO_FILTER else f"{name},{filter_name}"
    score = figures.harness.score(task, label) if figures.harness else None
    if score is None or score.tuned is None or score.higher_is_better is None:
        known = [
            f"{HARNESS_METRIC_PREFIX}{s.task}/{s.metric}" for s in (figures.harness.scores if figures.harness else [])
        ]
        raise ConfigError(
            [f"eval.metric: {metric} is not a harness figure with a direction (higher or lower is better); "
             f"the harness measured {known or 'nothing'}"],
            "eval.metric",
        )  # fmt: skip
    return metric, float(score.tuned), score.higher_is_better


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
    metric_setting: str = "auto",
) -> PromotionDecision:
    """Record `output_dir` as the best for its key if its metric (`eval.metric`) beats the current entry; report
    the decision."""
    metric, value, higher_is_better = promotion_metric(figures, metric_setting)
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


# The variable `smoltune serve --api-key` also reads (smoltune.serve.auth.API_KEY_ENV; the layers keep this
# module from importing it, tests/serve/test_api_units.py checks they agree).
SERVE_API_KEY_ENV = "SMOLTUNE_API_KEY"


def served_name(run_name: str) -> str:
    """The adapter name a promoted run is served under: a run name may hold '.', which PEFT refuses in adapter
    names (smoltune.serve.types.ADAPTER_NAME)."""
    return run_name.replace(".", "-")


def notify_server(server_url: str, name: str, adapter_dir: str, timeout_s: float = 120) -> str:
    """Hand a promoted adapter to a running `smoltune serve` (POST /v1/adapters, `output.notify_server`), with
    the server's API key from SMOLTUNE_API_KEY when set; returns what it answered (redacted)."""
    import os

    import httpx

    key = os.environ.get(SERVE_API_KEY_ENV)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.post(
            f"{server_url.rstrip('/')}/v1/adapters",
            json={"name": served_name(name), "path": adapter_dir},
            headers=headers,
            timeout=timeout_s,
        )
    except httpx.HTTPError as err:
        return f"could not reach {redact(server_url)}: {type(err).__name__}"
    return f"{redact(server_url)} answered {response.status_code}: {response.text[:200]}"
