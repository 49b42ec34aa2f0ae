"""What the training stage is given (`TrainSpec`, written as JSON for the worker process), and where what it
returns (`smoltune.records.TrainResult`) is stored in the stage folder (`result.json`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoltune.records import TrainResult

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
    train_tokens: str | None = None  # the prepare stage's token ids of train_file's rows (None: tokenise them)


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
