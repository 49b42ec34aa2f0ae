"""Held-out evaluation of the base and the tuned model.

    python -c "from smoltune.evaluate.stage import measure_base; help(measure_base)"

Eval loss is the mean cross-entropy over the answer tokens of held-out rows (prompt tokens masked exactly as
in training). Generations are greedy, so base and tuned answers differ only because of the adapter.

The base and the tuned model are measured apart (`measure_base`, `measure_tuned`) and combined by
`combine_figures`: the base's figures depend only on the base weights, the held-out rows, the eval settings and
the precision, so the pipeline caches them in a stage of their own and a new adapter measures only itself.
`evaluate_tuned` measures both with one model in memory (the adapter switched off for the base). Both take an
`EvalRequest`: the tuned model and what it is measured on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import Progress

from smoltune.config import EvalConfig
from smoltune.data.prompts import format_prompt
from smoltune.data.tokens import tokenize_rows
from smoltune.evaluate.generation import generate_answers, load_one, load_tuned, load_tuned_alone
from smoltune.evaluate.loss import mean_answer_loss
from smoltune.evaluate.prompts import load_eval_prompts
from smoltune.evaluate.scoring import MATCH_SCORES, score_answers
from smoltune.files import read_jsonl
from smoltune.records import EvalFigures
from smoltune.train.precision import DTYPES


@dataclass(frozen=True)
class HeldOut:
    """What a model is measured on: the held-out rows (tokenised as in training) and the eval prompts."""

    rows: list[dict[str, Any]]
    tokens: list[Any]
    prompts: list[dict[str, Any]]
    texts: list[str]

    def batches(self, batch_size: int) -> int:
        """Batches one model's measurement takes (loss, answers, prompts): the progress bar's length."""
        return 2 * math.ceil(len(self.rows) / batch_size) + math.ceil(len(self.texts) / batch_size)


def held_out(tokenizer: Any, eval_file: str, ev: EvalConfig, template: str, max_seq_length: int) -> HeldOut:
    rows = read_jsonl(eval_file)
    prompts = load_eval_prompts(ev.prompts_file)
    return HeldOut(
        rows=rows,
        tokens=tokenize_rows(tokenizer, rows, max_seq_length, mask_prompt=True),
        prompts=prompts,
        texts=[format_prompt(p, template, tokenizer) for p in prompts],
    )


def measure(model: Any, tokenizer: Any, data: HeldOut, ev: EvalConfig, step: Callable[[], None]) -> dict[str, Any]:
    """One model's loss, scores, held-out answers and prompt generations (what base.json holds for the base)."""
    loss = mean_answer_loss(model, data.tokens, tokenizer.pad_token_id, ev.batch_size, step)
    prompts = [r["prompt"] for r in data.rows]
    answers = generate_answers(model, tokenizer, prompts, ev.answer_max_new_tokens, ev.batch_size, step)
    generations = generate_answers(model, tokenizer, data.texts, ev.max_new_tokens, ev.batch_size, step)
    return {"loss": loss, "score": score_answers(data.rows, answers), "answers": answers, "prompts": generations}


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[], None]]:
    with Progress(console=Console(stderr=True)) as progress:  # stdout stays for the CLI's run folder line
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def measure_base(
    model_path: str,
    eval_file: str,
    ev: EvalConfig,
    template: str,
    max_seq_length: int,
    trust_remote_code: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The base model alone, in the training's `precision`: `measure`'s figures plus the seconds it took.

    The same function as the adapter switched off (LoRA) or the base loaded beside the tuned model (full
    fine-tuning): the base weights and the base tokenizer (a full fine-tune saves it unchanged)."""
    started = time.perf_counter()
    model, tokenizer = load_one(model_path, trust_remote_code, DTYPES[precision])
    data = held_out(tokenizer, eval_file, ev, template, max_seq_length)
    with _progress("evaluating base", data.batches(ev.batch_size)) as step:
        base = measure(model, tokenizer, data, ev, step)
    return {**base, "seconds": round(time.perf_counter() - started, 2)}


@dataclass(frozen=True)
class EvalRequest:
    """What measuring a tuned model needs: the base, the training's output, the held-out rows and the settings."""

    model_path: str  # the base model's folder
    output_dir: str  # the training's adapter (LoRA) or model (full fine-tuning)
    mode: str  # the training's: "lora" or "full"
    eval_file: str  # the held-out rows
    ev: EvalConfig
    template: str
    max_seq_length: int
    trust_remote_code: bool = False
    precision: str = "fp32"  # the training's (fp32, bf16 or fp16): the models are loaded in it


def _loaded(request: EvalRequest, loader: Callable[..., tuple[Any, Any]]) -> tuple[Any, Any, HeldOut]:
    """`loader`'s model(s) for `request` in the training's precision, the tokenizer, and what they are measured on."""
    model, tokenizer = loader(
        request.model_path, request.output_dir, request.mode, request.trust_remote_code, DTYPES[request.precision]
    )
    data = held_out(tokenizer, request.eval_file, request.ev, request.template, request.max_seq_length)
    return model, tokenizer, data


def measure_tuned(request: EvalRequest) -> tuple[dict[str, Any], HeldOut]:
    """The tuned model alone (`measure`'s figures plus seconds), and what it was measured on."""
    started = time.perf_counter()
    model, tokenizer, data = _loaded(request, load_tuned_alone)
    with _progress("evaluating tuned", data.batches(request.ev.batch_size)) as step:
        tuned = measure(model, tokenizer, data, request.ev, step)
    return {**tuned, "seconds": round(time.perf_counter() - started, 2)}, data


def combine_figures(
    base: dict[str, Any], tuned: dict[str, Any], data: HeldOut, precision: str
) -> tuple[EvalFigures, list[dict[str, Any]], list[dict[str, Any]]]:
    """(figures, held-out answers, prompt generations) of base beside tuned. Pure."""
    figures = EvalFigures(
        eval_rows=len(data.tokens),
        eval_seconds=round(base["seconds"] + tuned["seconds"], 2),
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
        for r, b, t in zip(data.rows, base["answers"], tuned["answers"], strict=True)
    ]
    generations = [
        {**p, "base": b, "tuned": t} for p, b, t in zip(data.prompts, base["prompts"], tuned["prompts"], strict=True)
    ]
    return figures, answers, generations


def evaluate_tuned(request: EvalRequest) -> tuple[EvalFigures, list[dict[str, Any]], list[dict[str, Any]]]:
    """Base and tuned with one model in memory (the adapter switched off for the base), both in the training's
    precision: for a single measurement outside the pipeline (benchmarks, GPU checks)."""
    started = time.perf_counter()
    models, tokenizer, data = _loaded(request, load_tuned)
    ev = request.ev
    with _progress("evaluating base and tuned", 2 * data.batches(ev.batch_size)) as step:
        with models.base():
            base = measure(models.model, tokenizer, data, ev, step)
        tuned = measure(models.model, tokenizer, data, ev, step)
    seconds = round(time.perf_counter() - started, 2)
    return combine_figures({**base, "seconds": seconds}, {**tuned, "seconds": 0.0}, data, request.precision)
