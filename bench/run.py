"""The training benchmark: the seed job trained by plain TRL, by Unsloth and by smoltune, side by side.

    make bench                                   # = python bench/run.py (10 steps, all three contenders)
    python bench/run.py --steps 3 --contenders unsloth,smoltune --out runs/bench/quick.json

One invocation measures the fp32 matmul peak, then runs each contender in its own process, one after the
other, on the same 100 rows of the built-in dataset (tokenised identically), and prints real tokens/s,
seconds per step, peak RSS and losses; then smoltune's speed ratio against the faster baseline, its MFU
(4·N·tokens/s ÷ peak, N = the model's matmul parameters) and whether its losses match the baselines'.
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
    "trl": ("(a) trl", "contender_trl.py"),  # plain transformers + peft + trl, TRL's default settings
    "unsloth": ("(b) unsloth", "contender_unsloth.py"),  # FastLanguageModel, its Alpaca notebook's settings
    "smoltune": ("(c) smoltune", "contender_smoltune.py"),  # smoltune's training stage, seed job settings
}
BASELINES = ("trl", "unsloth")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per contender (default 10)")
    parser.add_argument("--rows", type=int, default=100, help="training rows of the built-in dataset")
    parser.add_argument("--model", default="embedded", help="model.source: 'embedded' or a local model folder")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of the default")
    parser.add_argument("--out", default="runs/bench/bench.json", help="where the figures go (JSON)")
    return parser.parse_args()


def prepare_rows(rows: int, work: Path) -> Path:
    """The seed job's training rows (same sampling as its prepare stage) as prompt/completion JSONL."""
    from smoltune.config import DataConfig
    from smoltune.data.prompts import to_prompt_completion
    from smoltune.data.split import split_rows
    from smoltune.data.stage import load_rows
    from smoltune.files import write_jsonl

    data = DataConfig(num_samples=rows)
    train, _ = split_rows(load_rows(data), data.num_samples, data.eval_samples, data.seed)
    return write_jsonl(work / "train.jsonl", [to_prompt_completion(r, data.template) for r in train])


def run_script(script: str, *args: str) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run([sys.executable, str(HERE / script), *args], env=env)
    if completed.returncode != 0:
        sys.exit(f"bench: {script} failed with exit status {completed.returncode}; its output is above")


def matmul_peak() -> dict:
    out = subprocess.run([sys.executable, str(HERE / "matmul_peak.py")], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def run_contender(
    key: str, model: str, train_file: Path, steps: int, work: Path, overrides: tuple[str, ...] = (), tag: str = ""
) -> dict:
    """Train with contender `key` in its own process; `overrides` (train.KEY=VALUE) apply to smoltune only."""
    name = f"{key}{tag}"
    result = work / f"{name}.json"
    result.unlink(missing_ok=True)
    args = ["--model", model, "--train-file", str(train_file), "--steps", str(steps)]
    args += [f"--set={override}" for override in overrides]
    run_script(CONTENDERS[key][1], *args, "--result", str(result), "--work-dir", str(work / name))
    return json.loads(result.read_text())


def print_results(console: Console, figures: dict[str, dict], summary: dict) -> None:
    table = Table(title=f"Seed job, {summary['steps']} steps, {summary['machine']}")
    for column in ("", "real tokens/s", "s / step", "peak RSS", "final loss", "mean loss", "MFU"):
        table.add_column(column, justify="right" if column else "left")
    for key, result in figures.items():
        table.add_row(
            CONTENDERS[key][0],
            f"{result['tokens_per_second']:.1f}",
            f"{result['seconds_per_step']:.2f}",
            f"{result['peak_rss_mb']:,.0f} MiB",
            f"{result['losses'][-1]:.4f}",
            f"{verdicts.mean(result['losses']):.4f}",
            f"{summary['mfu'][key]:.1%}",
        )
    console.print(table)
    console.print(f"matmul peak {summary['peak_gflops']} GFLOP/s fp32, N = {summary['matmul_params']:,} parameters")
    for line in summary["verdicts"]:
        console.print(line)


def main() -> None:
    args = parse_args()
    keys = [k.strip() for k in args.contenders.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(CONTENDERS))
    if unknown:
        sys.exit(f"bench: unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    from smoltune.model import resolve_model

    console = Console(width=max(Console().width, 100))
    out = Path(args.out)
    work = out.parent / (out.stem + "-work")
    work.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.model).path
    train_file = prepare_rows(args.rows, work)
    peak = matmul_peak()
    console.print(f"matmul peak: {peak['peak_gflops']} GFLOP/s on {peak['threads']} threads")
    figures = {}
    for key in keys:
        console.rule(f"{CONTENDERS[key][0]}: {args.steps} steps")
        figures[key] = run_contender(key, model, train_file, args.steps, work)
    summary = verdicts.summarise(figures, peak["peak_gflops"], verdicts.matmul_params(model), BASELINES)
    summary.update(
        steps=args.steps,
        rows=args.rows,
        date=dt.date.today().isoformat(),
        machine=f"{platform.machine()} {verdicts.cpu_name()}, {peak['threads']} threads",
        matmul=peak,
    )
    out.write_text(json.dumps({"summary": summary, "contenders": figures}, indent=2))
    print_results(console, figures, summary)
    console.print(f"figures written to {out}")


if __name__ == "__main__":
    main()
