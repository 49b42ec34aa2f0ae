"""Runs started at the same time: separate run folders, no clashing caches or registry entries, and the
same job started twice trains once (stage locks, training slots) while both runs finish correctly."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from smoltune.config import load_config
from smoltune.pipeline.registry import read_registry
from tests.tiny_model import tiny_overrides


def tiny(tiny_model_dir: Path, runs: Path, *extra: str):  # noqa: ANN201
    return load_config("configs/smoke.yaml", [*tiny_overrides(tiny_model_dir, runs), *extra])


def run_together(*configs) -> list[dict]:  # noqa: ANN002
    from flows.finetune import finetune

    with ThreadPoolExecutor(max_workers=len(configs)) as pool:
        run_dirs = list(pool.map(lambda c: finetune(config=c), configs))
    assert len(set(run_dirs)) == len(run_dirs)  # every run has its own folder
    return [json.loads((Path(d) / "summary.json").read_text()) for d in run_dirs]


def test_different_jobs_at_once(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first, second = run_together(
        tiny(tiny_model_dir, runs, "train.learning_rate=1e-3"), tiny(tiny_model_dir, runs, "train.learning_rate=5e-3")
    )
    assert first["artifacts"]["adapter_dir"] != second["artifacts"]["adapter_dir"]
    assert first["train"]["settings"]["learning_rate"] == 1e-3
    assert second["train"]["settings"]["learning_rate"] == 5e-3
    # Both went through the promotion gate; the registry holds exactly one, consistent entry.
    [entry] = read_registry(runs / "registry.json").values()
    decisions = [first["promotion"], second["promotion"]]
    assert any(d["promoted"] for d in decisions)
    assert entry["run"] in {first["run_name"], second["run_name"]}
    assert entry["value"] == max(d["value"] for d in decisions)


def test_the_same_job_twice_at_once_trains_once(prefect_server: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first, second = run_together(tiny(tiny_model_dir, runs), tiny(tiny_model_dir, runs))
    assert first["artifacts"]["adapter_dir"] == second["artifacts"]["adapter_dir"]
    # One training: both runs report the very same measured result.
    assert first["train"]["train_seconds"] == second["train"]["train_seconds"]
    assert first["eval"] == second["eval"]
