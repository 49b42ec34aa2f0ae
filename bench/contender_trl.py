"""Contender (a): plain transformers + peft + trl, SFTTrainer with TRL's default settings, as TRL's docs show it.

    python bench/contender_trl.py --model DIR --train-file train.jsonl --steps 10 --result a.json --work-dir /tmp/a

Only what the seed job fixes is set (batch, accumulation, lr, warm-up, schedule, weight decay, seed, steps) plus
`use_cpu`; everything else is TRL's default: gradient checkpointing on, bf16 autocast on, padded batches.
"""

from __future__ import annotations

import common
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from smoltune.config import LORA_TARGETS_LLAMA


def main() -> None:
    args = common.parse_args(__doc__)
    torch.manual_seed(common.SEED)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
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
    )
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS_LLAMA, task_type="CAUSAL_LM")
    trainer = common.cpu_loss_trainer(SFTTrainer)(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(common.tokenized_rows(tokenizer, args.train_file)),
        processing_class=tokenizer,
        peft_config=lora,
    )
    figures = common.measure_training(trainer)
    settings = {
        "gradient_checkpointing": config.gradient_checkpointing,
        "bf16": config.bf16,
        "optim": str(config.optim),
        "padding_free": config.padding_free,
    }
    common.write_result(args.result, "trl-defaults", figures, settings, "bf16" if config.bf16 else "fp32")


if __name__ == "__main__":
    main()
