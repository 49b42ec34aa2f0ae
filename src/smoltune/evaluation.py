"""Held-out evaluation of the base and the tuned model.

    python -c "from smoltune.evaluation import evaluate_tuned; help(evaluate_tuned)"

Eval loss is the mean cross-entropy over the answer tokens of held-out rows (prompt tokens masked exactly as
in training). Generations are greedy, so base and tuned answers differ only because of the adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import mean
from typing import Any

import yaml
from rich.console import Console
from rich.progress import Progress

from smoltune.checking import first_line, is_correct, normalise_answer, rouge_l
from smoltune.config import EvalConfig
from smoltune.data import format_prompt
from smoltune.files import read_jsonl
from smoltune.tokens import IGNORE_INDEX, tokenize_rows
from smoltune.training import load_model_and_tokenizer, pick_device

MATCH_SCORES = ("accuracy", "exact_match", "normalised_match", "rouge_l")


class EvalPromptsError(ValueError):
    """The eval prompts file is missing or malformed; the message names the file."""


def load_eval_prompts(path: str | Path) -> list[dict[str, str]]:
    """Prompts from YAML: a list of {instruction, input?} mappings (or plain strings)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise EvalPromptsError(f"{path}: cannot read eval prompts: {err}") from None
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise EvalPromptsError(f"{path}: expected a non-empty list under 'prompts'")
    prompts = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, str):
            item = {"instruction": item}
        if not isinstance(item, dict) or not str(item.get("instruction", "")).strip():
            raise EvalPromptsError(f"{path}: prompt {number} needs a non-empty 'instruction'")
        prompts.append({"instruction": str(item["instruction"]), "input": str(item.get("input") or "")})
    return prompts


def mean_answer_loss(
    model: Any, examples: list[dict], pad_id: int, batch_size: int, on_batch: Callable[[], None] = lambda: None
) -> float:
    """Token-weighted mean cross-entropy over label positions that are not IGNORE_INDEX."""
    import torch

    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):
                n = len(e["input_ids"])
                ids[i, :n], labels[i, :n], mask[i, :n] = (
                    torch.tensor(e["input_ids"]),
                    torch.tensor(e["labels"]),
                    1,
                )
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total_loss += loss.item()
            total_tokens += int((shift_labels != IGNORE_INDEX).sum())
            on_batch()
    return total_loss / max(total_tokens, 1)


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    on_batch: Callable[[], None] = lambda: None,
) -> list[str]:
    """Greedy answers, batched with left padding so every prompt ends at the same position."""
    import torch

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    answers: list[str] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(
                prompts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            out = model.generate(
                **enc.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            on_batch()
    return answers


def score_answers(rows: list[dict], answers: list[str]) -> dict[str, Any]:
    """Scores of generated answers against the rows' `output`.

    For every row: exact match, normalised match and ROUGE-L (first line of the answer). For rows whose
    `check` is exact / normalised (the built-in dataset): accuracy, overall and per family."""
    if not rows:
        return {
            "exact_match": None,
            "normalised_match": None,
            "rouge_l": None,
            "accuracy": None,
            "checked_rows": 0,
            "by_family": {},
        }
    firsts = [first_line(a) for a in answers]
    references = [str(r["output"]) for r in rows]
    scores: dict[str, Any] = {
        "exact_match": round(mean(float(a == ref.strip()) for a, ref in zip(firsts, references, strict=True)), 4),
        "normalised_match": round(
            mean(
                float(normalise_answer(a) == normalise_answer(ref)) for a, ref in zip(firsts, references, strict=True)
            ),
            4,
        ),
        "rouge_l": round(mean(rouge_l(a, ref) for a, ref in zip(firsts, references, strict=True)), 4),
    }
    checked = [
        (row.get("family", "all"), verdict)
        for row, answer in zip(rows, answers, strict=True)
        if (verdict := is_correct(answer, str(row["output"]), str(row.get("check", "")))) is not None
    ]
    by_family: dict[str, list[bool]] = {}
    for family, verdict in checked:
        by_family.setdefault(family, []).append(verdict)
    return {
        **scores,
        "accuracy": round(mean(v for _, v in checked), 4) if checked else None,
        "checked_rows": len(checked),
        "by_family": {f: round(mean(v), 4) for f, v in sorted(by_family.items())},
    }


class BaseAndTuned:
    """The tuned model as `.model`, and a context in which `.model` answers as the base model.

    LoRA: one model whose adapter is switched off for the base figures. Full fine-tuning: the base model is
    loaded beside the tuned one."""

    def __init__(self, tuned: Any, base: Any = None) -> None:
        self.tuned, self.base, self.model = tuned, base, tuned

    @contextmanager
    def as_base(self) -> Iterator[None]:
        if self.base is None:
            with self.tuned.disable_adapter():
                yield
            return
        self.model = self.base
        try:
            yield
        finally:
            self.model = self.tuned


def load_tuned(model_path: str, output_dir: str, mode: str, trust_remote_code: bool) -> tuple[BaseAndTuned, Any]:
    device = pick_device()
    if mode == "lora":
        from peft import PeftModel

        base, tokenizer = load_model_and_tokenizer(model_path, device, trust_remote_code)
        return BaseAndTuned(PeftModel.from_pretrained(base, output_dir)), tokenizer
    tuned, tokenizer = load_model_and_tokenizer(output_dir, device, trust_remote_code)
    base, _ = load_model_and_tokenizer(model_path, device, trust_remote_code)
    return BaseAndTuned(tuned, base), tokenizer


def evaluate_tuned(
    model_path: str,
    output_dir: str,
    mode: str,
    eval_file: str,
    ev: EvalConfig,
    template: str,
    max_seq_length: int,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Eval loss, held-out accuracy and prompt generations for the base and the tuned model."""
    models, tokenizer = load_tuned(model_path, output_dir, mode, trust_remote_code)
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
        with models.as_base():
            base = measure(lambda: progress.advance(task))
        tuned = measure(lambda: progress.advance(task))
    return {
        "eval_rows": len(held_out),
        "eval_loss_base": round(base["loss"], 5),
        "eval_loss_tuned": round(tuned["loss"], 5),
        "perplexity_base": round(math.exp(min(base["loss"], 50)), 3),
        "perplexity_tuned": round(math.exp(min(tuned["loss"], 50)), 3),
        "checked_rows": base["score"]["checked_rows"],
        **{
            f"{name}_{label}": result["score"][name]
            for name in MATCH_SCORES
            for label, result in (("base", base), ("tuned", tuned))
        },
        "accuracy_by_family": {
            family: {"base": base["score"]["by_family"][family], "tuned": tuned["score"]["by_family"][family]}
            for family in base["score"]["by_family"]
        },
        "answers": [
            {"family": r.get("family"), "reference": r["output"], "base": b, "tuned": t}
            for r, b, t in zip(rows, base["answers"], tuned["answers"], strict=True)
        ],
        "generations": [
            {**p, "base": b, "tuned": t} for p, b, t in zip(prompts, base["prompts"], tuned["prompts"], strict=True)
        ],
    }
