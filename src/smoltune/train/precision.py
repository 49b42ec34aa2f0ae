"""Training precision by what the device can do, one rule for both backends.

    python -c "from smoltune.train.precision import precision_for; print(precision_for('cuda', 'lora', False))"

- CUDA with bf16 (A100, H100, H200): LoRA keeps the frozen base in bf16 and trains under bf16 autocast; full
  fine-tuning loads fp32 master weights and trains under bf16 autocast (pure-bf16 weights lose small updates).
- CUDA without bf16 (the seed's Colab T4, V100): fp16 with loss scaling. LoRA keeps the frozen base in fp16;
  the adapter weights stay fp32 (PEFT's default), which fp16 loss scaling requires of trainable weights. Full
  fine-tuning keeps fp32 master weights. transformers refuses bf16=True on these cards.
- CPU: fp32, as measured faster than bf16 on CPUs without native bf16 units (README, Performance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Precision:
    load_dtype: Literal["float32", "bfloat16", "float16"]  # how the model's weights are loaded
    bf16: bool  # TrainingArguments.bf16: bf16 autocast
    fp16: bool  # TrainingArguments.fp16: fp16 autocast with loss scaling
    reason: str


def precision_for(device: str, mode: str, bf16_supported: bool) -> Precision:
    """The precision for training `mode` ('lora' or 'full') on `device`; pure, so every device is testable here."""
    if device != "cuda":
        return Precision("float32", False, False, "CPU: fp32")
    master = "float32" if mode == "full" else None
    if bf16_supported:
        return Precision(master or "bfloat16", True, False, "CUDA with bf16: bf16 autocast" + _master(master))
    return Precision(
        master or "float16", False, True, "CUDA without bf16 (T4/V100): fp16, loss scaling" + _master(master)
    )


def _master(master: str | None) -> str:
    return ", fp32 master weights" if master else ", frozen base in 16 bits, adapters fp32"


def device_precision(device: str, mode: str) -> Precision:
    import torch

    return precision_for(device, mode, device == "cuda" and torch.cuda.is_bf16_supported())
