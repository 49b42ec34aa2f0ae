"""What the preference worker is given (`PreferenceSpec`, written as JSON for its process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

REFERENCE_FILE = "train_with_reference.jsonl"


@dataclass
class PreferenceSpec:
    """Everything the DPO process needs. `phase` 'reference' scores the training pairs with the SFT model and
    writes REFERENCE_FILE; 'train' trains and writes the adapter and `result.json`."""

    phase: Literal["reference", "train"]
    model_path: str  # the base model's folder
    sft_output: str  # the SFT adapter folder: the policy's start and the reference
    train_file: str  # pairs: prompt (formatted), chosen, rejected [, ref_chosen_logps, ref_rejected_logps]
    work_dir: str
    settings: dict[str, Any]  # PreferenceConfig, as JSON
    precision: str  # the SFT training's precision: the reference and the policy run in it
    trust_remote_code: bool = False
    base_model_id: str | None = None
