"""The DPO benchmark: three contenders run DPO on the same pairs from the same SFT adapter, one after the other.

    make bench-dpo                               # = python bench/dpo.py (10 steps, 64 built-in pairs)
    python bench/dpo.py --steps 4 --contenders trl_cpu,smoltune --out runs/bench/dpo.json

Contenders, each as its own users run it, each in its own process, time-boxed (`--limit` seconds):
(a) TRL's DPOTrainer with its defaults (bf16, gradient checkpointing, a reference forward every step); on a CPU
    TRL 1.15 fails at its first step (its fused LM head is a Triton kernel): reported as it fails.
(b) TRL configured for this CPU: reference log-probs precomputed (TRL's `precompute_ref_log_probs`, outside the
    timed loop), no gradient checkpointing, the precision smoltune measures fastest here, and the one change
    TRL needs to run on a CPU at all (smoltune.preference.cpu_logprobs).
(c) smoltune's preference stages: the reference stage, then training with the stored reference and the
    shared-prompt rows (smoltune.preference.shared_prompt); only the training is timed, as for (b).
Real tokens are TRL's count of non-padding tokens of both rows of each pair (the prompt counted twice) for all
three, so tokens/s compare time for the same work. Losses per step are printed: (b) and (c) must agree.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import common

HERE = Path(__file__).resolve().parent
CONTENDERS = {"trl": "(a) trl defaults", "trl_cpu": "(b) trl, CPU-aware", "smoltune": "(c) smoltune"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per contender (default 10)")
    parser.add_argument("--pairs", type=int, default=64, help="built-in pairs (default 64)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--model", default="embedded", help="model.source: 'embedded' or a local model folder")
    parser.add_argument("--limit", type=float, default=600, help="seconds each contender may take (default 600)")
    parser.add_argument("--out", default="runs/bench/dpo.json")
    parser.add_argument("--contender", help=argparse.SUPPRESS)  # internal: run one contender in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    return parser.parse_args()


def make_inputs(work: Path, pairs: int, source: str) -> tuple[str, Path, Path]:
    """(model folder, a LoRA r=16 adapter as the SFT result, the formatted pairs file)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from smoltune.config import LORA_TARGETS_LLAMA
    from smoltune.data.prompts import format_prompt
    from smoltune.files import write_jsonl
    from smoltune.model import resolve_model
    from smoltune.preference.builtin import checkable_questions, plausible_wrong

    model = resolve_model(source).path
    adapter = work / "sft-adapter"
    if not adapter.is_dir():
        lora = LoraConfig(r=16, lora_alpha=16, target_modules=LORA_TARGETS_LLAMA, task_type="CAUSAL_LM")
        get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora).save_pretrained(adapter)
    rows = [
        {"prompt": format_prompt(q), "chosen": q["output"], "rejected": plausible_wrong(q)}
        for q in checkable_questions(pairs, seed=3407)
    ]
    return model, adapter, write_jsonl(work / "pairs.jsonl", rows)


def settings(steps: int) -> dict[str, Any]:
    from smoltune.config import PreferenceConfig

    defaults = PreferenceConfig()  # the default DPO job's settings, steps aside
    return {
        "max_steps": steps,
        "batch_size": defaults.batch_size,
        "grad_accum": defaults.grad_accum,
        "learning_rate": defaults.learning_rate,
        "beta": defaults.beta,
    }


def run_trl(args: argparse.Namespace, model: str, adapter: Path, pairs: Path, cpu_aware: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from smoltune.files import read_jsonl

    s = settings(args.steps)
    bf16 = args.precision == "bf16" if cpu_aware else True
    extra = {"precompute_ref_log_probs": True, "gradient_checkpointing": False} if cpu_aware else {}
    config = DPOConfig(
        output_dir=str(Path(args.work) / "out"), max_steps=s["max_steps"], per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=s["grad_accum"], learning_rate=s["learning_rate"], beta=s["beta"], bf16=bf16,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=3407,
        include_num_input_tokens_seen="non_padding", **extra,
    )  # fmt: skip
    if cpu_aware:
        from smoltune.preference.cpu_logprobs import install

        install("cpu")  # TRL's LM-head kernel is Triton-only: the one change TRL needs to run here
    dtype = torch.bfloat16 if bf16 else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    policy = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    tokenizer = AutoTokenizer.from_pretrained(model)
    trainer = DPOTrainer(
        model=policy, args=config, train_dataset=Dataset.from_list(read_jsonl(pairs)), processing_class=tokenizer
    )
    # The SFT bench's own measurement (wall time of train(), real tokens, peak RSS, per-step losses).
    return {**common.measure_training(trainer), "precision": "bf16" if bf16 else "fp32"}


def run_smoltune(args: argparse.Namespace, model: str, adapter: Path, pairs: Path) -> dict[str, Any]:
    from smoltune.config import PreferenceConfig
    from smoltune.preference.runner import run_preference
    from smoltune.preference.spec import PreferenceSpec

    pref = PreferenceConfig(**settings(args.steps), save_steps=10_000)
    common = {"model_path": model, "sft_output": str(adapter), "settings": pref.model_dump(mode="json")}
    work = Path(args.work)
    for stage in ("ref", "train"):  # an earlier run's results would be returned as they are, not measured
        shutil.rmtree(work / stage, ignore_errors=True)
    scored = run_preference(
        PreferenceSpec(
            phase="reference", train_file=str(pairs), work_dir=str(work / "ref"), precision=args.precision, **common
        )
    )
    result = run_preference(
        PreferenceSpec(
            phase="train", train_file=str(scored), work_dir=str(work / "train"), precision=args.precision, **common
        )
    )
    return {"seconds": result.train_seconds, "tokens": result.tokens_seen, "losses": result.losses,
            "peak_rss_mb": result.peak_memory_mb, "precision": result.precision}  # fmt: skip


def one_contender(args: argparse.Namespace) -> None:
    work = Path(args.work)
    model, adapter, pairs = make_inputs(work.parent, args.pairs, args.model)
    if args.contender == "smoltune":
        figures = run_smoltune(args, model, adapter, pairs)
    else:
        figures = run_trl(args, model, adapter, pairs, cpu_aware=args.contender == "trl_cpu")
    (work / "result.json").write_text(json.dumps(figures))


def launch(name: str, args: argparse.Namespace, root: Path, precision: str) -> dict[str, Any]:
    work = root / name
    work.mkdir(parents=True, exist_ok=True)
    (work / "result.json").unlink(missing_ok=True)
    command = [sys.executable, __file__, "--contender", name, "--work", str(work), "--steps", str(args.steps),
               "--pairs", str(args.pairs), "--precision", precision, "--model", args.model]  # fmt: skip
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.limit, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {args.limit:.0f} s"}
    if proc.returncode != 0 or not (work / "result.json").is_file():
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line] or lines[-1:] or ["(no output)"]
        return {"error": f"failed (exit {proc.returncode}): {errors[-1].strip()[:200]}"}
    figures = json.loads((work / "result.json").read_text())
    figures["tokens_per_second"] = round(figures["tokens"] / figures["seconds"], 2)
    return figures


def machine() -> str:
    flags = (
        Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0]
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    kinds = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return f"{platform.processor() or platform.machine()}, flags: {', '.join(kinds) or 'unknown'}"


def main() -> None:
    args = parse_args()
    if args.contender:
        one_contender(args)
        return
    from smoltune.model import pick_device, resolve_model
    from smoltune.train.precision import resolve_precision

    precision = resolve_precision(pick_device(), "lora", "auto", resolve_model(args.model).path).name
    root = Path(args.out).with_suffix("")
    results = {}
    for name in args.contenders.split(","):
        print(f"{CONTENDERS[name]} ...", flush=True)
        results[name] = launch(name, args, root, precision)
        print(json.dumps(results[name]), flush=True)
    report = {
        "machine": machine(),
        "steps": args.steps,
        "pairs": args.pairs,
        "precision": precision,
        "results": results,
    }
    ok = {k: v for k, v in results.items() if "error" not in v}
    if "smoltune" in ok and len(ok) > 1:
        best = max((v["tokens_per_second"], k) for k, v in ok.items() if k != "smoltune")
        report["speedup"] = {"against": best[1], "ratio": round(ok["smoltune"]["tokens_per_second"] / best[0], 2)}
        if "trl_cpu" in ok:
            diffs = [abs(a - b) for a, b in zip(ok["trl_cpu"]["losses"], ok["smoltune"]["losses"], strict=False)]
            report["max_loss_difference_vs_trl_cpu"] = round(max(diffs), 6)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))


if __name__ == "__main__":
    main()
