"""Promotion: better adapters replace the registered one, worse or equal ones do not; concurrent safe."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from smoltune.registry import promote, read_registry, registry_key

KEY = registry_key("embedded", "embedded")


def test_first_run_is_promoted_then_only_better_ones(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    first = promote(registry, KEY, "r1", "/a1", {"accuracy_tuned": 0.10, "eval_loss_tuned": 1.8})
    assert first.promoted and first.current_value is None
    worse = promote(registry, KEY, "r2", "/a2", {"accuracy_tuned": 0.08, "eval_loss_tuned": 1.7})
    assert not worse.promoted and (worse.value, worse.current_value, worse.current_run) == (0.08, 0.10, "r1")
    tie = promote(registry, KEY, "r3", "/a3", {"accuracy_tuned": 0.10, "eval_loss_tuned": 1.7})
    assert not tie.promoted
    better = promote(registry, KEY, "r4", "/a4", {"accuracy_tuned": 0.15, "eval_loss_tuned": 1.9})
    assert better.promoted and better.current_value == 0.10
    assert read_registry(registry)[KEY] == {"run": "r4", "output_dir": "/a4", "metric": "accuracy_tuned", "value": 0.15}


def test_eval_loss_decides_without_accuracy(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    assert promote(registry, KEY, "r1", "/a1", {"accuracy_tuned": None, "eval_loss_tuned": 1.8}).promoted
    assert not promote(registry, KEY, "r2", "/a2", {"accuracy_tuned": None, "eval_loss_tuned": 1.9}).promoted
    decision = promote(registry, KEY, "r3", "/a3", {"accuracy_tuned": None, "eval_loss_tuned": 1.5})
    assert decision.promoted and "lower is better" in decision.reason


def test_concurrent_promotions_keep_the_best(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    values = [0.05 * i for i in range(1, 13)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda v: promote(registry, KEY, f"r{v:.2f}", "/x", {"accuracy_tuned": v}), values))
    assert read_registry(registry)[KEY]["value"] == max(values)
