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
from contender_trl import train_with_trl


def main() -> None:
    args = common.parse_args(__doc__)
    bf16 = args.precision == "bf16"
    train_with_trl(
        args,
        "trl-cpu-aware",
        dtype=torch.bfloat16 if bf16 else torch.float32,
        gradient_checkpointing=False,
        bf16=bf16,
        optim="adamw_torch_fused",
    )


if __name__ == "__main__":
    main()
