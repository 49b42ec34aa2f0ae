"""Contender (b): plain transformers + peft + trl, configured by a user who knows this CPU.

    python bench/contender_trl_cpu.py --model DIR --train-file train.jsonl --steps 10 --precision bf16 ...

What such a user changes from TRL's defaults: gradient checkpointing off (it recomputes the forward to save
memory a 135M model does not need), the precision that is fastest on this machine (`--precision`, measured by
the bench with the same matmul test smoltune uses; in bf16 the frozen base is loaded in bf16, PEFT keeps the
adapter fp32) and torch's fused AdamW. Left as TRL has them: padded batches (TRL supports padding-free
batches only with FlashAttention, which has no CPU build) and the full LM head.
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
    bf16 = args.precision == "bf16"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if bf16 else torch.float32)
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
        gradient_checkpointing=False,
        bf16=bf16,
        optim="adamw_torch_fused",
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
    settings = {"gradient_checkpointing": False, "bf16": bf16, "optim": str(config.optim), "precision": args.precision}
    common.write_result(args.result, "trl-cpu-aware", figures, settings, args.precision)


if __name__ == "__main__":
    main()
