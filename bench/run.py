"""The training benchmark: four contenders train the same rows side by side, on two datasets.

    make bench                                   # = python bench/run.py (10 steps, both datasets, all four)
    python bench/run.py --steps 3 --datasets seed --contenders unsloth,smoltune --out runs/bench/quick.json

One invocation measures the machine's fp32 and bf16 matmul peaks and the precision smoltune's `auto` picks here,
then, for each dataset, runs each contender in its own process, one after the other, on the same rows
(tokenised identically, same labelled tokens), and prints real tokens/s, seconds per step, peak RSS, losses and
utilisation; then smoltune's speed ratio against the fastest other contender and the goals' verdicts (verdicts.py).

Contenders, each as its own users run it: (a) TRL's defaults; (b) PEFT + TRL configured for this CPU (no
gradient checkpointing, the fastest precision, fused AdamW); (c) Unsloth with its notebook's settings, through
its own trainer and loss; (d) smoltune's training stage with the seed job's settings.
Datasets: `seed` (the seed job's 100 built-in rows, ~10% response tokens) and `long` (100 worked word problems,
smoltune.data.worked: 150-400 tokens a row, ~60% response tokens).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import verdicts
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
CONTENDERS = {
    "trl": ("(a) trl defaults", "contender_trl.py"),
    "trl_cpu": ("(b) trl, CPU-aware", "contender_trl_cpu.py"),
    "unsloth": ("(c) unsloth", "contender_unsloth.py"),
    "smoltune": ("(d) smoltune", "contender_smoltune.py"),
}
BASELINES = ("trl", "trl_cpu", "unsloth")
DATASETS = ("seed", "long")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per contender (default 10)")
    parser.add_argument("--rows", type=int, default=100, help="training rows per dataset")
    parser.add_argument("--model", default="embedded", help="model.source: 'embedded' or a local model folder")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of the default")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset of seed,long")
    parser.add_argument("--out", default="runs/bench/bench.json", help="where the figures go (JSON)")
    return parser.parse_args()


def prepare_rows(dataset: str, rows: int, work: Path) -> Path:
    """The dataset's training rows as prompt/completion JSONL: `seed` samples the built-in rows as the seed job's
    prepare stage does; `long` generates worked word problems."""
    from smoltune.config import DataConfig
    from smoltune.data.prompts import to_prompt_completion
    from smoltune.data.split import split_rows
    from smoltune.data.stage import load_rows
    from smoltune.data.worked import worked_rows
    from smoltune.files import write_jsonl

    data = DataConfig(num_samples=rows)
    if dataset == "seed":
        chosen, _ = split_rows(load_rows(data), data.num_samples, data.eval_samples, data.seed)
    else:
        chosen = worked_rows(rows, seed=data.seed)
    return write_jsonl(work / f"{dataset}.jsonl", [to_prompt_completion(r, data.template) for r in chosen])


def data_stats(model: str, train_file: Path) -> verdicts.DataStats:
    """Labelled share and mean length of the rows, tokenised exactly as every contender gets them."""
    import common
    from transformers import AutoTokenizer

    rows = common.tokenized_rows(AutoTokenizer.from_pretrained(model), str(train_file))
    real = sum(len(r["input_ids"]) for r in rows)
    labelled = sum(sum(label != -100 for label in r["labels"]) for r in rows)
    return verdicts.DataStats(round(labelled / real, 4), round(real / len(rows), 1))


def run_script(script: str, *args: str) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run([sys.executable, str(HERE / script), *args], env=env)
    if completed.returncode != 0:
        sys.exit(f"bench: {script} failed with exit status {completed.returncode}; its output is above")


def matmul_peak() -> dict:
    out = subprocess.run([sys.executable, str(HERE / "matmul_peak.py")], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def run_contender(
    key: str,
    model: str,
    train_file: Path,
    steps: int,
    work: Path,
    overrides: tuple[str, ...] = (),
    tag: str = "",
    precision: str = "fp32",
) -> dict:
    """Train with contender `key` in its own process; `overrides` (train.KEY=VALUE) apply to smoltune only,
    `precision` to contender (b) only."""
    name = f"{key}{tag}"
    result = work / f"{name}.json"
    result.unlink(missing_ok=True)
    args = ["--model", model, "--train-file", str(train_file), "--steps", str(steps), "--precision", precision]
    args += [f"--set={override}" for override in overrides]
    run_script(CONTENDERS[key][1], *args, "--result", str(result), "--work-dir", str(work / name))
    return json.loads(result.read_text())


def print_results(console: Console, figures: dict[str, dict], summary: dict, header: str) -> None:
    stats = summary["data"]
    table = Table(
        title=f"{summary['dataset']} rows ({stats['mean_row']:.0f} tokens a row, {stats['labelled_share']:.0%} "
        f"labelled), {header}"
    )
    columns = ("", "precision", "real tokens/s", "s / step", "peak RSS", "final loss", "mean loss", "MFU", "MFU fp32")
    for column in columns:
        table.add_column(column, justify="right" if column else "left")
    for key, result in figures.items():
        use = summary["utilisation"][key]
        table.add_row(
            CONTENDERS[key][0],
            use["precision"],
            f"{result['tokens_per_second']:.1f}",
            f"{result['seconds_per_step']:.2f}",
            f"{result['peak_rss_mb']:,.0f} MiB",
            f"{result['losses'][-1]:.4f}",
            f"{verdicts.mean(result['losses']):.4f}",
            f"{use['mfu']:.1%}",
            f"{use['mfu_of_fp32_peak']:.1%}",
        )
    console.print(table)
    for line in summary["verdicts"]:
        console.print(line)


def main() -> None:
    args = parse_args()
    keys = [k.strip() for k in args.contenders.split(",") if k.strip()]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(keys) - set(CONTENDERS)) + sorted(set(datasets) - set(DATASETS))
    if unknown:
        sys.exit(f"bench: unknown {', '.join(unknown)}; contenders: {', '.join(CONTENDERS)}; datasets: seed, long")
    from smoltune.model import pick_device, resolve_model
    from smoltune.train.precision import resolve_precision

    console = Console(width=max(Console().width, 110))
    out = Path(args.out)
    work = out.parent / (out.stem + "-work")
    work.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.model).path
    peak = matmul_peak()
    chosen = resolve_precision(pick_device(), "lora", "auto", model)  # what smoltune's auto picks here; (b) gets it
    flags = verdicts.cpu_flags()
    amx = "amx_bf16" in flags
    header = (
        f"{args.steps} steps, {dt.date.today().isoformat()}, {platform.machine()} {verdicts.machine_label(flags)}, "
        f"{peak['threads']} threads"
    )
    console.print(f"matmul peaks (GFLOP/s, {peak['threads']} threads): {peak['peaks']}; {chosen.reason}")
    shape = verdicts.model_shape(model)
    results: dict = {}
    for dataset in datasets:
        train_file = prepare_rows(dataset, args.rows, work)
        stats = data_stats(model, train_file)
        figures = {}
        for key in keys:
            console.rule(f"{dataset} rows, {CONTENDERS[key][0]}: {args.steps} steps")
            figures[key] = run_contender(
                key, model, train_file, args.steps, work, tag=f"-{dataset}", precision=chosen.name
            )
        summary = verdicts.summarise(figures, dataset, peak["peaks"], shape, stats, amx, BASELINES)
        results[dataset] = {"summary": summary, "contenders": figures}
    report = {"machine": header, "matmul": peak, "auto_precision": chosen.reason, "datasets": results}
    report.update(steps=args.steps, rows=args.rows, model_shape=verdicts.asdict(shape))
    out.write_text(json.dumps(report, indent=2))
    console.rule("results")
    console.print(f"matmul peaks (GFLOP/s): {peak['peaks']}; smoltune auto: {chosen.reason}")
    for result in results.values():
        print_results(console, result["contenders"], result["summary"], header)
    console.print(f"figures written to {out}")


if __name__ == "__main__":
    main()
