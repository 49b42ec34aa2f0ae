"""Held-out evaluation of the base and the tuned model.

    python -c "from smoltune.evaluate.stage import evaluate_tuned; help(evaluate_tuned)"

Eval loss is the mean cross-entropy over the answer tokens of held-out rows (prompt tokens masked exactly as
in training). Generations are greedy, so base and tuned answers differ only because of the adapter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import Progress

from smoltune.config import EvalConfig
from smoltune.data.prompts import format_prompt
from smoltune.data.tokens import tokenize_rows
from smoltune.evaluate.generation import generate_answers, load_tuned
from smoltune.evaluate.loss import mean_answer_loss
from smoltune.evaluate.prompts import load_eval_prompts
from smoltune.evaluate.scoring import MATCH_SCORES, score_answers
from smoltune.files import read_jsonl
from smoltune.records import EvalFigures
from smoltune.train.precision import DTYPES


def evaluate_tuned(
    model_path: str,
    output_dir: str,
    mode: str,
    eval_file: str,
    ev: EvalConfig,
    template: str,
    max_seq_length: int,
    trust_remote_code: bool = False,
    precision: str = "fp32",
) -> tuple[EvalFigures, list[dict[str, Any]], list[dict[str, Any]]]:
    """(figures, held-out answers, prompt generations) of the base and the tuned model, both in the training's
    `precision` (fp32, bf16 or fp16)."""
    started = time.perf_counter()
    models, tokenizer = load_tuned(model_path, output_dir, mode, trust_remote_code, DTYPES[precision])
    rows = read_jsonl(eval_file)
    held_out = tokenize_rows(tokenizer, rows, max_seq_length, mask_prompt=True)
    prompts = load_eval_prompts(ev.prompts_file)
    texts = [format_prompt(p, template, tokenizer) for p in prompts]

    def measure(step: Callable[[], None]) -> dict[str, Any]:
        loss = mean_answer_loss(models.model, held_out, tokenizer.pad_token_id, ev.batch_size, step)
        answers = generate_answers(
            models.model, tokenizer, [r["prompt"] for r in rows], ev.answer_max_new_tokens, ev.batch_size, step
        )
        generations = generate_answers(models.model, tokenizer, texts, ev.max_new_tokens, ev.batch_size, step)
        return {"loss": loss, "score": score_answers(rows, answers), "answers": answers, "prompts": generations}

    batches = 2 * (2 * math.ceil(len(rows) / ev.batch_size) + math.ceil(len(texts) / ev.batch_size))
    with Progress(console=Console(stderr=True)) as progress:  # stdout stays for the CLI's run folder line
        task = progress.add_task("evaluating base and tuned", total=batches)
        with models.base():
            base = measure(lambda: progress.advance(task))
        tuned = measure(lambda: progress.advance(task))
    figures = EvalFigures(
        eval_rows=len(held_out),
        eval_seconds=round(time.perf_counter() - started, 2),
        eval_precision=precision,
        eval_loss_base=round(base["loss"], 5),
        eval_loss_tuned=round(tuned["loss"], 5),
        perplexity_base=round(math.exp(min(base["loss"], 50)), 3),
        perplexity_tuned=round(math.exp(min(tuned["loss"], 50)), 3),
        checked_rows=base["score"]["checked_rows"],
        **{
            f"{name}_{label}": result["score"][name]
            for name in MATCH_SCORES
            for label, result in (("base", base), ("tuned", tuned))
        },
        accuracy_by_family={
            family: {"base": base["score"]["by_family"][family], "tuned": tuned["score"]["by_family"][family]}
            for family in base["score"]["by_family"]
        },
    )
    answers = [
        {"family": r.get("family"), "reference": r["output"], "base": b, "tuned": t}
        for r, b, t in zip(rows, base["answers"], tuned["answers"], strict=True)
    ]
    generations = [
        {**p, "base": b, "tuned": t} for p, b, t in zip(prompts, base["prompts"], tuned["prompts"], strict=True)
    ]
    return figures, answers, generations
