"""The Unsloth backend: FastLanguageModel loading and LoRA wrapping.

Importing this module imports unsloth, which patches trl's SFTTrainer for the whole process; the train
task therefore always trains in a separate process (`smoltune.train.worker`), never in the flow's own.
"""

from __future__ import annotations

from typing import Any

import unsloth  # noqa: F401  - must come before transformers / trl / peft are used, as Unsloth requires
from unsloth import FastLanguageModel

from smoltune.config import TrainConfig
from smoltune.train.precision import Precision


def load_unsloth(
    model_path: str, config: TrainConfig, device: str, precision: Precision, load_in_4bit: bool = False
) -> tuple[Any, Any]:
    """Model and tokenizer through FastLanguageModel; in lora mode with LoRA layers added the Unsloth way.
    The base in 4-bit only with `model.load_in_4bit` (QLoRA), else in the precision rule's dtype."""
    import torch

    dtype = getattr(torch, precision.load_dtype)  # the hf backend's rule (smoltune.train.precision)
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_path,
        max_seq_length=config.max_seq_length,
        dtype=dtype,
        load_in_4bit=load_in_4bit,
        full_finetuning=config.mode == "full",
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.mode == "lora":
        model = FastLanguageModel.get_peft_model(
            model,
            r=config.lora.r,
            target_modules=list(config.lora.target_modules),
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            bias="none",
            # Unsloth's own checkpointing saves memory on GPUs; on the CPU it only costs time.
            use_gradient_checkpointing="unsloth" if device == "cuda" else False,
            random_state=config.seed,
            use_rslora=config.lora.use_rslora,
            use_dora=config.lora.use_dora,  # Unsloth hands extra keywords to PEFT's LoraConfig
        )
    return model, tokenizer
