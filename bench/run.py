"""The training benchmark: four contenders train the same rows side by side, on two datasets.

    make bench                                   # = python bench/run.py (10 steps, both datasets, all four)
    python bench/run.py --steps 3 --datasets seed --contenders unsloth,smoltune --out runs/bench/quick.json
    python bench/run.py --budget-min 10 --box-s 60          # the whole run in 10 minutes, <= 60 s of training each

One invocation measures the machine's fp32 and bf16 matmul peaks and the precision smoltune's `auto` picks here,
then, for each dataset, runs each contender in its own process, one after the other, on the same rows
(tokenised identically, same labelled tokens), and prints real tokens/s, seconds per step, peak RSS, losses and
utilisation; then smoltune's speed ratio against the fastest other contender and the goals' verdicts (verdicts.py).
The header names the machine; the table, the precision each contender trained in.

Time box (timebox.py): the whole invocation fits `--budget-min` (default 20 minutes) on any CPU. Before each
contender its box, printed as it starts, is the time left less a reserve for loading the contenders still to
run (estimated from the loads measured so far, 40 s before the first), shared evenly among them, and at most
`--box-s`. A contender still training at the end of its box, or not training after `--load-s` (240 s) of
loading, is stopped with its process group; it is reported "did not finish", with the real tokens/s it reached
until its last finished micro-batch, the steps and losses it logged, and its peak RSS as the process's
high-water mark (VmHWM) read just before the stop.

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
import time
from pathlib import Path

import timebox
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
DATASETS = ("seed", "long")  # what `make bench` runs
MAX_LENGTH = 2048  # the seed job's max_seq_length: the `max` rows fill it (`--datasets max`, not in the default)
EXTRA_DATASETS = ("max",)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per contender (default 10)")
    parser.add_argument("--rows", type=int, default=100, help="training rows per dataset")
    parser.add_argument("--model", default="embedded", help="model.source: 'embedded' or a local model folder")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of the default")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: seed, long, max")
    parser.add_argument("--out", default="runs/bench/bench.json", help="where the figures go (JSON)")
    parser.add_argument("--budget-min", type=float, default=20.0, help="minutes for the whole invocation (20)")
    parser.add_argument("--box-s", type=float, help="at most this many seconds of training per contender")
    parser.add_argument(
        "--load-s", type=float, default=timebox.LOAD_ALLOWANCE_S, help="stop a contender not training after this"
    )
    return parser.parse_args()


def prepare_rows(dataset: str, rows: int, work: Path, model: str | None = None) -> Path:
    """The dataset's training rows as prompt/completion JSONL: `seed` samples the built-in rows as the seed job's
    prepare stage does; `long` generates worked word problems; `max` stretches the seed rows to fill the seed
    job's max_seq_length (2048 tokens a row; the tokenizer of `model` measures them)."""
    from smoltune.config import DataConfig
    from smoltune.data.prompts import to_prompt_completion
    from smoltune.data.split import split_rows
    from smoltune.data.stage import load_rows
    from smoltune.data.worked import worked_rows
    from smoltune.files import write_jsonl

    data = DataConfig(num_samples=rows)
    if dataset == "max":  # the text of every built-in row, cut into `rows` rows of MAX_LENGTH tokens
        import scaling

        corpus = [to_prompt_completion(r, data.template) for r in load_rows(data)]
        return scaling.write_stretched(model, corpus, MAX_LENGTH, work, count=rows, name=dataset)
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
    box_s: float | None = None,
    load_s: float | None = None,
) -> dict:
    """Train with contender `key` in its own process; `overrides` (train.KEY=VALUE) apply to smoltune only,
    `precision` to contender (b) only. Stopped after `box_s` seconds of training or `load_s` seconds without
    training (None: no limit), it is reported from its progress lines (timebox.py) with `finished: false`."""
    name = f"{key}{tag}"
    result, progress = work / f"{name}.json", work / f"{name}.progress.jsonl"
    result.unlink(missing_ok=True)
    script = str(HERE / CONTENDERS[key][1])
    args = ["--model", model, "--train-file", str(train_file), "--steps", str(steps), "--precision", precision]
    args += [f"--set={override}" for override in overrides]
    args += ["--result", str(result), "--work-dir", str(work / name), "--progress", str(progress)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    started = time.monotonic()
    status, stopped = timebox.run_boxed([sys.executable, script, *args], env, progress, box_s, load_s)
    if stopped is not None:
        figures = {
            "name": name,
            **timebox.figures_from_progress(stopped.lines, steps, stopped.seconds, stopped.peak_rss_mb),
        }
    elif status != 0:
        sys.exit(f"bench: {CONTENDERS[key][1]} failed with exit status {status}; its output is above")
    else:
        figures = {**json.loads(result.read_text()), "finished": True}
    return {**figures, "box_s": box_s, "process_seconds": round(time.monotonic() - started, 1)}


def cells(result: dict, use: dict) -> list[str]:
    """One contender's row of the results table; a figure it never reached is shown as a dash."""

    def shown(value: float | None, spec: str, unit: str = "") -> str:
        return "-" if value is None else f"{value:{spec}}{unit}"

    done = result.get("finished", True)
    losses = result["losses"]
    steps = str(result["steps"]) if done else f"{result['steps']} of {result['steps_planned']}, did not finish"
    rss = shown(result["peak_rss_mb"], ",.0f", " MiB") + ("" if done else " *")
    return [
        use["precision"] or "-",
        steps,
        shown(result["tokens_per_second"], ".1f"),
        shown(result["seconds_per_step"], ".2f"),
        rss,
        shown(losses[-1] if losses else None, ".4f"),
        shown(verdicts.mean(losses) if losses else None, ".4f"),
        shown(use["mfu"], ".1%"),
        shown(use["mfu_of_fp32_peak"], ".1%"),
    ]


def print_results(console: Console, figures: dict[str, dict], summary: dict, header: str) -> None:
    stats = summary["data"]
    table = Table(
        title=f"{summary['dataset']} rows ({stats['mean_row']:.0f} tokens a row, {stats['labelled_share']:.0%} "
        f"labelled), {header}"
    )
    columns = ("", "precision", "steps", "real tokens/s", "s / step", "peak RSS", "final loss", "mean loss", "MFU")
    for column in (*columns, "MFU fp32"):
        table.add_column(column, justify="right" if column else "left")
    for key, result in figures.items():
        table.add_row(CONTENDERS[key][0], *cells(result, summary["utilisation"][key]))
    console.print(table)
    stopped = {key: result for key, result in figures.items() if not result.get("finished", True)}
    if stopped:
        console.print("* peak RSS of a contender stopped at its box: its process's high-water mark (VmHWM) at the stop")
    for key, result in stopped.items():
        console.print(f"{CONTENDERS[key][0]} did not finish: {result['reason']}")
    for line in summary["verdicts"]:
        console.print(line)


def selected(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The contenders and datasets asked for, in order."""
    keys = [k.strip() for k in args.contenders.split(",") if k.strip()]
    return keys, [d.strip() for d in args.datasets.split(",") if d.strip()]


def run_all(
    args: argparse.Namespace, model: str, work: Path, budget: timebox.Budget, console: Console, peaks: dict, auto: str
) -> dict:
    """Every contender on every dataset, each in the box the budget leaves it (printed as it starts); figures and
    summary by dataset. `auto`: the precision smoltune's `auto` picks here, which contender (b) gets too."""
    keys, datasets = selected(args)
    shape, kind = verdicts.model_shape(model), verdicts.cpu_kind()
    results: dict = {}
    runs = len(datasets) * len(keys)
    runs_left = runs
    for dataset in datasets:
        train_file = prepare_rows(dataset, args.rows, work, model)
        stats = data_stats(model, train_file)
        figures = {}
        for key in keys:
            box = budget.next_box(runs_left)
            left = f"{budget.left_s() / 60:.1f} of {budget.total_s / 60:g} min left"
            console.rule(
                f"{dataset} rows, {CONTENDERS[key][0]}: {args.steps} steps, box {box:.0f} s of training "
                f"(run {runs - runs_left + 1} of {runs}, {left})"
            )
            figures[key] = run_contender(
                key,
                model,
                train_file,
                args.steps,
                work,
                tag=f"-{dataset}",
                precision=auto,
                box_s=box,
                load_s=args.load_s,
            )
            budget.record(figures[key])
            runs_left -= 1
            if not figures[key]["finished"]:
                console.print(f"{CONTENDERS[key][0]} did not finish: {figures[key]['reason']}")
        summary = verdicts.summarise(figures, dataset, peaks, shape, stats, kind, BASELINES)
        results[dataset] = {"summary": summary, "contenders": figures}
    return results


def main() -> None:
    args = parse_args()
    budget = timebox.Budget(args.budget_min * 60, args.box_s)
    keys, datasets = selected(args)
    unknown = sorted(set(keys) - set(CONTENDERS)) + sorted(set(datasets) - set(DATASETS + EXTRA_DATASETS))
    if unknown:
        sys.exit(f"bench: unknown {', '.join(unknown)}; contenders: {', '.join(CONTENDERS)}; datasets: seed, long, max")
    from smoltune.model import pick_device, resolve_model
    from smoltune.train.precision import resolve_precision

    console = Console(width=max(Console().width, 130))
    out = Path(args.out)
    work = out.parent / (out.stem + "-work")
    work.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.model).path
    peak = matmul_peak()
    chosen = resolve_precision(pick_device(), "lora", "auto", model)  # what smoltune's auto picks here; (b) gets it
    header = (
        f"{args.steps} steps (time-boxed, {args.budget_min:g} min budget), {dt.date.today().isoformat()}, "
        f"{platform.machine()} {verdicts.machine_label()}, {peak['threads']} threads"
    )
    console.print(f"machine: {header}")
    console.print(f"matmul peaks (GFLOP/s, {peak['threads']} threads): {peak['peaks']}; {chosen.reason}")
    results = run_all(args, model, work, budget, console, peak["peaks"], chosen.name)
    report = {"machine": header, "matmul": peak, "auto_precision": chosen.reason, "datasets": results}
    report.update(steps=args.steps, rows=args.rows, model_shape=verdicts.asdict(verdicts.model_shape(model)))
    report["budget"] = {"minutes": args.budget_min, "box_cap_s": args.box_s, "load_allowance_s": args.load_s}
    report["budget"]["elapsed_s"] = round(time.monotonic() - budget.started, 1)
    out.write_text(json.dumps(report, indent=2))
    console.rule("results")
    console.print(f"matmul peaks (GFLOP/s): {peak['peaks']}; smoltune auto: {chosen.reason}")
    for result in results.values():
        print_results(console, result["contenders"], result["summary"], header)
    console.print(f"figures written to {out}; {report['budget']['elapsed_s'] / 60:.1f} min in all")


if __name__ == "__main__":
    main()
