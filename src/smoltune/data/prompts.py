"""Prompt formatting: the seed's Alpaca template or the model's own chat template.

python -c "from smoltune.data.prompts import format_prompt; print(format_prompt({'instruction': 'Hi'}))"
"""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def format_prompt(row: Row, template: str = "alpaca", tokenizer: Any = None) -> str:
    """The prompt for a row, ending where the model's answer starts."""
    instruction, extra = _text(row.get("instruction")).strip(), _text(row.get("input")).strip()
    if template == "alpaca":
        return ALPACA_TEMPLATE.format(instruction=instruction, input=extra)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.template=chat needs a tokenizer with a chat template")
    content = f"{instruction}\n\n{extra}" if extra else instruction
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def to_prompt_completion(row: Row, template: str = "alpaca", tokenizer: Any = None) -> Row:
    """A training example: the prompt and the answer (tokenisation appends the model's EOS)."""
    return {**row, "prompt": format_prompt(row, template, tokenizer), "completion": _text(row.get("output"))}


def _text(value: Any) -> str:
    """A row's value as text; None (a missing value, which the data checks report) is empty."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)
