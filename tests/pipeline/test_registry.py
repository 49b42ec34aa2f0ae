"""Promotion: better adapters replace the registered one, worse or equal ones do not; runs measured on other
held-out rows never compete; concurrent safe."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from smoltune.pipeline.registry import promote, read_registry, registry_key
from smoltune.records import EvalFigures

HELD_OUT = "a" * 64


def figures(accuracy: float | None, loss: float = 1.8) -> EvalFigures:
    return EvalFigures(
        eval_rows=10,
        eval_loss_base=2.0,
        eval_loss_tuned=loss,
        perplexity_base=7.0,
        perplexity_tuned=6.0,
        checked_rows=10 if accuracy is not None else 0,
        accuracy_base=0.0 if accuracy is not None else None,
        accuracy_tuned=accuracy,
    )


def run(registry: Path, name: str, fig: EvalFigures, held_out: str = HELD_OUT):  # noqa: ANN201
    return promote(registry, "embedded", "embedded", name, f"/{name}", fig, held_out)


def test_first_run_is_promoted_then_only_better_ones(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    first = run(registry, "r1", figures(0.10, 1.8))
    assert first.promoted and first.current_value is None
    worse = run(registry, "r2", figures(0.08, 1.7))
    assert not worse.promoted and (worse.value, worse.current_value, worse.current_run) == (0.08, 0.10, "r1")
    assert not run(registry, "r3", figures(0.10, 1.7)).promoted  # a tie is not better
    better = run(registry, "r4", figures(0.15, 1.9))
    assert better.promoted and better.current_value == 0.10
    key = registry_key("embedded", "embedded", HELD_OUT, "accuracy_tuned")
    assert read_registry(registry)[key] == {
        "run": "r4",
        "output_dir": "/r4",
        "metric": "accuracy_tuned",
        "value": 0.15,
        "heldout_sha256": HELD_OUT,
    }


def test_eval_loss_decides_without_accuracy(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    assert run(registry, "r1", figures(None, 1.8)).promoted
    assert not run(registry, "r2", figures(None, 1.9)).promoted
    decision = run(registry, "r3", figures(None, 1.5))
    assert decision.promoted and "lower is better" in decision.reason


def test_runs_on_other_held_out_rows_are_never_compared(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    assert run(registry, "big", figures(0.40)).promoted
    # One held-out row answered right is 100%: it must not take the crown from a run measured on many rows.
    lucky = run(registry, "one-row", figures(1.0), held_out="b" * 64)
    assert (
        lucky.current_run is None and "big" in lucky.not_compared[0] and "other held-out rows" in lucky.not_compared[0]
    )
    key = registry_key("embedded", "embedded", HELD_OUT, "accuracy_tuned")
    assert read_registry(registry)[key]["run"] == "big"
    # A later run on the original held-out rows still competes with "big" only.
    assert run(registry, "next", figures(0.45)).current_run == "big"


def test_concurrent_promotions_keep_the_best(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    values = [0.05 * i for i in range(1, 13)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda v: run(registry, f"r{v:.2f}", figures(v)), values))
    key = registry_key("embedded", "embedded", HELD_OUT, "accuracy_tuned")
    assert read_registry(registry)[key]["value"] == max(values)
