"""What the training stage is given (`TrainSpec`, written as JSON for the worker process) and what it
returns (`TrainResult`, stored as `result.json` in the stage folder)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"


@dataclass
class TrainSpec:
    """Everything the training process needs; written as JSON for the worker."""

    model_path: str
    train_file: str
    work_dir: str
    config: dict[str, Any]
    trust_remote_code: bool = False
    base_model_id: str | None = None  # recorded in adapter_config.json instead of this machine's cache path
    load_in_4bit: bool = False  # QLoRA: the frozen base quantised to 4-bit NF4 (CUDA only)


@dataclass
class TrainResult:
    """What a training run produced and measured; every field is JSON-serialisable."""

    backend: str
    backend_reason: str
    mode: str
    rank: int | None
    device: str
    trainable_params: int
    total_params: int
    steps: int
    train_seconds: float
    tokens_seen: int
    tokens_per_second: float
    peak_memory_mb: float
    losses: list[float]
    step_log: list[dict[str, float]]
    output_dir: str
    saved_mb: float
    resumed_from_step: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # the compute precision trained in (smoltune.train.precision); evaluation uses it too
    processes: int = 1  # data-parallel processes (torchrun); peak_memory_mb is rank 0's
    host: str = ""  # the machine that trained (rank 0's), e.g. which Dask worker's host in a sweep
    started_at: str = ""  # when the training loop started (UTC, ISO 8601); it ran train_seconds from there

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params


def finished_result(work_dir: str | Path) -> TrainResult | None:
    """The result of a training that finished in `work_dir` and whose weights are still there, else None.
    A result whose adapter or model folder was deleted is stale: it is removed and the training reruns."""
    result_file = Path(work_dir) / RESULT_FILE
    if not result_file.is_file():
        return None
    result = TrainResult(**json.loads(result_file.read_text()))
    if Path(result.output_dir).exists():
        return result
    result_file.unlink()
    return None
