"""Contender (a): plain transformers + peft + trl, SFTTrainer with TRL's default settings, as TRL's docs show it.

    python bench/contender_trl.py --model DIR --train-file train.jsonl --steps 10 --result a.json --work-dir /tmp/a
    python bench/contender_trl.py ... --progress a.jsonl   # the lines bench/run.py's time box reads (common.py)

Only what the seed job fixes is set (batch, accumulation, lr, warm-up, schedule, weight decay, seed, steps) plus
`use_cpu`; everything else is TRL's default: gradient checkpointing on, bf16 autocast on, padded batches.
"""

from __future__ import annotations

import argparse
from typing import Any

import common
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from smoltune.config import LORA_TARGETS_LLAMA


def train_with_trl(args: argparse.Namespace, name: str, dtype: torch.dtype | None = None, **changes: Any) -> None:
    """Train the seed job's LoRA with plain TRL: the settings the seed job fixes, `changes` to TRL's defaults
    (none for this contender), the base loaded in `dtype` (default: as transformers loads it); write the result
    as `name`. Contender (b) calls it with its own changes."""
    torch.manual_seed(common.SEED)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, **({} if dtype is None else {"dtype": dtype}))
    config = SFTConfig(
        output_dir=args.work_dir,
        max_steps=args.steps,
        per_device_train_batch_size=common.BATCH_SIZE,
        gradient_accumulation_steps=common.GRAD_ACCUM,
        learning_rate=common.LEARNING_RATE,
        warmup_steps=common.warmup_steps(args.steps),
        lr_scheduler_type="linear",
        weight_decay=common.WEIGHT_DECAY,
        seed=common.SEED,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        **changes,
    )
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS_LLAMA, task_type="CAUSAL_LM")
    trainer = common.cpu_loss_trainer(SFTTrainer)(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(common.tokenized_rows(tokenizer, args.train_file)),
        processing_class=tokenizer,
        peft_config=lora,
    )
    precision = "bf16" if config.bf16 else "fp32"
    trainer.add_callback(common.progress_callback(common.ProgressFile(args.progress, precision)))
    figures = common.measure_training(trainer)
    settings = {
        "gradient_checkpointing": config.gradient_checkpointing,
        "bf16": config.bf16,
        "optim": str(config.optim),
        "padding_free": config.padding_free,
    }
    common.write_result(args.result, name, figures, settings, precision)


def main() -> None:
    train_with_trl(common.parse_args(__doc__), "trl-defaults")


if __name__ == "__main__":
    main()
