"""Contender (c): Unsloth's FastLanguageModel with the settings of its Alpaca notebook (Llama-3 8B Alpaca), trained
through Unsloth's own patched SFTTrainer and loss (it reports "chunked CE = True" on the CPU).

    python bench/contender_unsloth.py --model DIR --train-file train.jsonl --steps 10 --result c.json --work-dir /tmp/c

The notebook's settings: dtype=None (Unsloth picks: bf16 on this CPU), LoRA r=16 alpha=16 dropout 0 on the 7
projections, use_gradient_checkpointing="unsloth", batch 2 x accumulation 4, warm-up 5, lr 2e-4, adamw_8bit
(Unsloth swaps in torch's fused AdamW on a CPU), weight decay 0.01, linear schedule, seed 3407. Changes a CPU
forces: load_in_4bit=False (bitsandbytes' 4-bit layers need a GPU; the other contenders train the same
full-precision weights), and the notebook's `fp16=not is_bf16_supported()` becomes fp16=False: fp16 mixed
precision needs CUDA."""

# ruff: noqa: I001  - Unsloth must be imported before transformers, trl and peft, so imports stay in this order
from __future__ import annotations

import unsloth  # noqa: F401
from unsloth import FastLanguageModel

import common
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from smoltune.config import LORA_TARGETS_LLAMA


def main() -> None:
    args = common.parse_args(__doc__)
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model, max_seq_length=2048, dtype=None, load_in_4bit=False
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        target_modules=LORA_TARGETS_LLAMA,
        lora_alpha=16,
        lora_dropout=0,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=common.SEED,
        use_rslora=False,
        loftq_config=None,
    )
    config = SFTConfig(
        output_dir=args.work_dir,
        max_steps=args.steps,
        per_device_train_batch_size=common.BATCH_SIZE,
        gradient_accumulation_steps=common.GRAD_ACCUM,
        warmup_steps=common.warmup_steps(args.steps),
        learning_rate=common.LEARNING_RATE,
        fp16=torch.cuda.is_available() and not torch.cuda.is_bf16_supported(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        logging_steps=1,
        optim="adamw_8bit",
        weight_decay=common.WEIGHT_DECAY,
        lr_scheduler_type="linear",
        seed=common.SEED,
        save_strategy="no",
        report_to="none",
        include_num_input_tokens_seen="non_padding",
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(common.tokenized_rows(tokenizer, args.train_file)),
        processing_class=tokenizer,
    )
    precision = "bf16" if model.dtype == torch.bfloat16 else "fp16" if model.dtype == torch.float16 else "fp32"
    trainer.add_callback(common.progress_callback(common.ProgressFile(args.progress, precision)))
    figures = common.measure_training(trainer)
    settings = {"dtype": str(model.dtype), "bf16": config.bf16, "optim": str(config.optim)}
    common.write_result(args.result, "unsloth-notebook", figures, settings, precision)


if __name__ == "__main__":
    main()
