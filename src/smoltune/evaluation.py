"""Held-out evaluation of the base and the tuned model.

    python -c "from smoltune.evaluation import evaluate_adapter; help(evaluate_adapter)"

Eval loss is the mean cross-entropy over the answer tokens of held-out rows (prompt tokens masked exactly as
in training). Generations are greedy, so base and tuned answers differ only because of the adapter.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from rich.progress import Progress

from smoltune.data import format_prompt
from smoltune.files import read_jsonl
from smoltune.training import IGNORE_INDEX, load_model_and_tokenizer, pick_device, tokenize_rows


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


def mean_answer_loss(model: Any, examples: list[dict], pad_id: int, batch_size: int) -> float:
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
    return total_loss / max(total_tokens, 1)


def generate_answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
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
    return answers


def evaluate_adapter(
    model_path: str,
    adapter_dir: str,
    eval_file: str,
    prompts_file: str,
    max_new_tokens: int,
    batch_size: int,
    max_seq_length: int,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Eval loss and greedy generations for the base model and base + adapter; returns a JSON-able dict."""
    from peft import PeftModel

    model, tokenizer = load_model_and_tokenizer(model_path, pick_device(), trust_remote_code)
    model = PeftModel.from_pretrained(model, adapter_dir)
    held_out = tokenize_rows(tokenizer, read_jsonl(eval_file), max_seq_length, mask_prompt=True)
    prompts = load_eval_prompts(prompts_file)
    texts = [format_prompt(p) for p in prompts]
    with Progress(transient=True) as progress:
        task = progress.add_task("evaluating base and tuned", total=4)
        with model.disable_adapter():
            loss_base = mean_answer_loss(model, held_out, tokenizer.pad_token_id, batch_size)
            progress.advance(task)
            base_answers = generate_answers(model, tokenizer, texts, max_new_tokens, batch_size)
            progress.advance(task)
        loss_tuned = mean_answer_loss(model, held_out, tokenizer.pad_token_id, batch_size)
        progress.advance(task)
        tuned_answers = generate_answers(model, tokenizer, texts, max_new_tokens, batch_size)
        progress.advance(task)
    return {
        "eval_rows": len(held_out),
        "eval_loss_base": round(loss_base, 5),
        "eval_loss_tuned": round(loss_tuned, 5),
        "perplexity_base": round(math.exp(min(loss_base, 50)), 3),
        "perplexity_tuned": round(math.exp(min(loss_tuned, 50)), 3),
        "generations": [
            {**p, "base": b, "tuned": t} for p, b, t in zip(prompts, base_answers, tuned_answers, strict=True)
        ],
    }
