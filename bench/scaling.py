"""How smoltune's training speed scales: tokens/s against sequence length, LoRA rank, and full fine-tuning.

    make bench-scaling                  # = python bench/scaling.py (about 10 minutes on 2 cores)
    python bench/scaling.py --steps 3 --out runs/bench/scaling.json

Rank and mode points train the seed job (100 built-in rows, batch 2 x accumulation 4). Sequence-length points
train rows stretched to 128, 512 and 2048 tokens (built-in rows concatenated into a long prompt, a short
answer kept as the completion) with 2 rows per step. Every point is its own process; tokens/s include the
first step, as in the benchmark. Prints a Markdown table for docs/benchmarks.md and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import run

SEQ_LENGTHS = (128, 512, 2048)
RANKS = (8, 16, 64, 256)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per point (default 3)")
    parser.add_argument("--model", default="embedded", help="model.source: 'embedded' or a local model folder")
    parser.add_argument("--out", default="runs/bench/scaling.json", help="where the figures go (JSON)")
    return parser.parse_args()


def stretched_rows(tokenizer: object, rows: list[dict], length: int, count: int) -> list[dict]:
    """`count` prompt/completion rows of about `length` tokens: each prompt is built-in rows' text concatenated
    and cut to `length` minus the completion, so only the prompt grows and the answer stays a real one."""
    text = "\n\n".join(r["prompt"] + r["completion"] for r in rows)
    corpus = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = []
    for index in range(count):
        completion = rows[index % len(rows)]["completion"]
        answer = len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        start = (index * 997) % max(1, len(corpus) - length)  # different text in each row
        prompt = tokenizer.decode(corpus[start : start + length - answer])
        out.append({"prompt": prompt, "completion": completion})
    return out


def write_stretched(
    model: str, source: Path | list[dict], length: int, work: Path, count: int = 16, name: str = "train"
) -> Path:
    """`count` rows of about `length` tokens stretched from `source` (a JSONL file or its rows), as JSONL."""
    from smoltune.data.tokens import load_tokenizer
    from smoltune.files import read_jsonl, write_jsonl

    rows = source if isinstance(source, list) else read_jsonl(source)
    return write_jsonl(work / f"{name}-{length}.jsonl", stretched_rows(load_tokenizer(model), rows, length, count))


def points(model: str, seed_rows: Path, work: Path) -> list[tuple[str, Path, tuple[str, ...]]]:
    """(label, rows file, train overrides) of every point in the table."""
    table = []
    for length in SEQ_LENGTHS:
        rows = write_stretched(model, seed_rows, length, work)
        overrides = (f"max_seq_length={length}", "batch_size=2", "grad_accum=1")
        table.append((f"LoRA r=16, sequence {length}", rows, overrides))
    for rank in RANKS:
        table.append((f"LoRA r={rank}, seed rows", seed_rows, (f"lora.r={rank}", f"lora.alpha={rank}")))
    table.append(("full fine-tuning, seed rows", seed_rows, ("mode=full",)))
    return table


def markdown(results: list[dict], header: str) -> str:
    lines = [header, "", "| run | real tokens/s | s / step | peak RSS | trainable params |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['tokens_per_second']:.1f} | {r['seconds_per_step']:.2f} | "
            f"{r['peak_rss_mb']:,.0f} MiB | {r['trainable_params']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    from smoltune.model import resolve_model

    out = Path(args.out)
    work = out.parent / (out.stem + "-work")
    work.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.model).path
    seed_rows = run.prepare_rows("seed", 100, work)
    peak = run.matmul_peak()
    results = []
    for index, (label, rows, overrides) in enumerate(points(model, seed_rows, work)):
        print(f"--- {label}", flush=True)
        figures = run.run_contender("smoltune", model, rows, args.steps, work, overrides, tag=f"-{index}")
        results.append({"label": label, "overrides": list(overrides), **figures})
    header = (
        f"{dt.date.today().isoformat()}, {run.verdicts.cpu_name()}, {peak['threads']} threads, fp32 matmul peak "
        f"{peak['peak_gflops']} GFLOP/s, {args.steps} steps per point"
    )
    out.write_text(json.dumps({"header": header, "matmul": peak, "points": results}, indent=2))
    print(markdown(results, header))
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()
