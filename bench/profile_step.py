"""Where the time of one smoltune training step goes on this machine: torch's profiler over a few optimizer
steps of the seed job (fast path as configured), grouped into matmuls, attention, cross-entropy and the rest.

    make bench-profile                          # = python bench/profile_step.py
    python bench/profile_step.py --steps 3 --set speed.fused_lora=false

Forward, backward and the AdamW step run as in training, without the Trainer around them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from smoltune.config import load_config
from smoltune.data.tokens import tokenize_rows
from smoltune.files import read_jsonl
from smoltune.train.fast_path import FastPath
from smoltune.train.packing import labelled_token_loss
from smoltune.train.precision import resolve_precision
from smoltune.train.sft import data_collator
from smoltune.train.spec import TrainSpec
from smoltune.train.trainer import load_for_training

DEFAULT_JOB = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
GROUPS = {
    "matmul (aten::mm/addmm/linear)": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention (SDPA)": ("scaled_dot_product",),
    "cross-entropy": ("log_softmax", "nll_loss"),
    "optimizer (fused AdamW)": ("_fused_adamw", "adam"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="profiled optimizer steps (after 2 warm-up steps)")
    parser.add_argument("--model", default="embedded", help="model.source: 'embedded' or a local model folder")
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE overrides")
    parser.add_argument("--dataset", default="seed", choices=("seed", "long"), help="bench rows to profile")
    return parser.parse_args()


def group_of(name: str) -> str:
    for group, needles in GROUPS.items():
        if any(needle in name for needle in needles):
            return group
    return "elementwise and other ops"


def main() -> None:
    args = parse_args()
    import run

    from smoltune.model import resolve_model

    config = load_config(DEFAULT_JOB, [f"train.{s}" for s in args.set]).train
    fast = FastPath.for_run(config, "hf")
    model_path = resolve_model(args.model).path
    work = Path("runs/bench/profile-work")
    work.mkdir(parents=True, exist_ok=True)
    train_file = run.prepare_rows(args.dataset, 100, work)
    spec = TrainSpec(model_path, str(train_file), str(work), config.model_dump(mode="json"))
    precision = resolve_precision("cpu", config.mode, config.precision, model_path)
    model, tokenizer = load_for_training("hf", spec, config, "cpu", fast, precision)
    autocast = precision.autocast_dtype
    print(f"precision: {precision.reason}")
    model.train()
    rows = tokenize_rows(tokenizer, read_jsonl(train_file), config.max_seq_length, config.train_on_responses_only)
    collate = data_collator(tokenizer, fast) or DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=fast.fused_optimizer)
    per_step = config.batch_size * config.grad_accum
    per_forward = per_step if fast.pack_accumulation else config.batch_size

    def step(index: int) -> int:
        group = rows[index * per_step : (index + 1) * per_step]
        for start in range(0, per_step, per_forward):
            batch = collate(group[start : start + per_forward])  # packed: boundaries added by the collator
            with torch.autocast("cpu", dtype=getattr(torch, autocast or "float32"), enabled=autocast is not None):
                loss = (
                    labelled_token_loss(model, batch, chunked=fast.chunked_cross_entropy)
                    if fast.labelled_logits_only
                    else model(**batch).loss
                )
            (loss * per_forward / per_step).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return sum(len(r["input_ids"]) for r in group)

    for index in range(2):
        step(index)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        tokens = sum(step(index) for index in range(2, 2 + args.steps))
    seconds = time.perf_counter() - started
    totals: dict[str, float] = {}
    for event in profiler.key_averages():
        group = group_of(event.key)
        totals[group] = totals.get(group, 0.0) + event.self_cpu_time_total / 1e6
    profiled = sum(totals.values())
    rate = tokens / seconds
    print(f"{args.steps} steps, {tokens} real tokens, {seconds:.2f} s under the profiler ({rate:.1f} tokens/s)")
    for group, spent in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {group:34s} {spent:7.2f} s  {spent / profiled:6.1%}")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
