"""Run folders: one per flow run, named by time and a short random id so concurrent runs never clash.

runs/20261129-101500-3fa2c1/
    config.yaml  summary.json  report.md  report.html  loss_curve.png  generations.json
    data/ validation/ train/ evaluation/   (links to the cached stage folders under runs/_cache/)
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from smoltune.config import OutputConfig, PipelineConfig
from smoltune.files import atomic_write_text


def new_run_name() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def create_run_dir(output: OutputConfig) -> Path:
    """Make the run folder; an explicit `output.run_name` that already exists is an error, not an overwrite."""
    run_dir = Path(output.runs_dir).resolve() / (output.run_name or new_run_name())
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise FileExistsError(f"run folder {run_dir} already exists; pick another output.run_name") from None
    return run_dir


def write_config(run_dir: Path, config: PipelineConfig) -> Path:
    """The exact configuration of the run, reloadable with `smoltune run --config`."""
    return atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


# Keys the cache adds to stage results, of no interest in the summary.
STAGE_BOOKKEEPING = ("stage_dir", "requires")


class StageTimer:
    """Wall seconds per stage, for the summary: `with timer("train"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - started, 2)


def saved_artifacts(train: dict[str, Any]) -> dict[str, Any]:
    """Where the trained weights are: `adapter_dir` / `adapter_mb` for LoRA, `model_dir` for full."""
    if train["mode"] == "lora":
        return {"adapter_dir": train["output_dir"], "adapter_mb": train["saved_mb"], "saved_mb": train["saved_mb"]}
    return {"model_dir": train["output_dir"], "saved_mb": train["saved_mb"]}


def build_summary(
    run_dir: Path,
    config: PipelineConfig,
    model: dict[str, Any],
    data: dict[str, Any],
    validation: dict[str, Any],
    train: dict[str, Any],
    evaluation: dict[str, Any],
    stage_seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The machine-readable record of a run (`summary.json`); the report is rendered from it."""
    return {
        "run_name": run_dir.name,
        "run_dir": str(run_dir),
        "config": config.model_dump(mode="json"),
        "model": model,
        "data": data,
        "validation": validation,
        "train": {k: v for k, v in train.items() if k not in ("output_dir", "saved_mb", *STAGE_BOOKKEEPING)},
        "eval": {k: v for k, v in evaluation.items() if k not in ("generations", *STAGE_BOOKKEEPING)},
        "artifacts": {
            **saved_artifacts(train),
            "report": str(run_dir / "report.md"),
            "report_html": str(run_dir / "report.html"),
            "generations": str(run_dir / "generations.json"),
        },
        "stage_seconds": stage_seconds or {},
    }
