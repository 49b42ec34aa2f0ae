"""Greedy generation with the base and the tuned model: base and tuned answers differ only by the training.

python -c "from smoltune.evaluate.generation import load_tuned; help(load_tuned)"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from smoltune.model import load_model_and_tokenizer, pick_device


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
