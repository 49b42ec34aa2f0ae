"""Tokenisation shared by validation, training and evaluation, so all three see the same tokens.

python -c "from smoltune.data.tokens import tokenize_example; help(tokenize_example)"
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


def tokenize_example(tokenizer: Any, prompt: str, completion: str, max_length: int, mask_prompt: bool) -> dict:
    """input_ids and labels for prompt + completion + EOS; prompt positions get IGNORE_INDEX when `mask_prompt`.

    The prompt and completion are tokenised separately and concatenated, so the boundary is exact and the
    model sees at inference the same prompt tokens it was trained on. EOS teaches the model to stop."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) if mask_prompt else list(prompt_ids)) + list(completion_ids)
    return {"input_ids": input_ids, "labels": labels[:max_length]}


def tokenize_rows(tokenizer: Any, rows: list[dict], max_length: int, mask_prompt: bool) -> list[dict]:
    return [tokenize_example(tokenizer, r["prompt"], r["completion"], max_length, mask_prompt) for r in rows]


def example_lengths(tokenizer: Any, prompts: list[str], completions: list[str]) -> list[tuple[int, int]]:
    """(prompt tokens, answer tokens + EOS) of each example, untruncated (batched: fast on thousands of rows)."""
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    return [(len(p), len(c) + 1) for p, c in zip(prompt_ids, completion_ids, strict=True)]


def load_tokenizer(model_path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
