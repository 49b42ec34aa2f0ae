"""Greedy generation with the base and the tuned model: base and tuned answers differ only by the training.

python -c "from smoltune.evaluate.generation import load_tuned; help(load_tuned)"

Speed (evaluation cost more than training on the seed job): prompts go shortest first in batches (little
padding), the template prefix they share is computed once (smoltune.evaluate.prefix), each batch stops when
all its rows have produced EOS, and the weights are in the training's precision (bf16 where the machine
measured it faster, smoltune.train.precision).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from smoltune.evaluate.prefix import PrefixBatcher, common_prefix_length, length_sorted_batches
from smoltune.model import load_model_and_tokenizer, pick_device


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    on_batch: Callable[[], None] = lambda: None,
) -> list[str]:
    """Greedy answers in the order of `prompts`."""
    import torch

    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if not rows:
        return []
    shared = common_prefix_length(rows, min(len(r) for r in rows) - 1)
    batcher = PrefixBatcher(model, rows[0][:shared], tokenizer.pad_token_id)
    answers: dict[int, str] = {}
    model.eval()
    with torch.inference_mode():
        for indices in length_sorted_batches([len(r) for r in rows], batch_size):
            batch = batcher.batch([rows[i] for i in indices])
            out = model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                past_key_values=batch.past_key_values,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = out[:, batch.input_ids.shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            answers.update({i: text.strip() for i, text in zip(indices, texts, strict=True)})
            on_batch()
    return [answers[i] for i in range(len(prompts))]


class BaseAndTuned:
    """The base model, then the tuned one: `base()` is a context in which `.model` answers as the base model;
    afterwards `.model` is the tuned model.

    LoRA: one model whose adapter is switched off for the base figures. For the tuned ones, fp32 weights get the
    adapter merged in (no adapter matmuls per token; the same function up to fp32 rounding); 16-bit weights keep
    it beside them, each projection one fused addmm (smoltune.train.fused_lora): a LoRA update is far smaller
    than a bf16 weight's rounding step, so merging would erase most of it (docs/benchmarks.md, "Evaluation
    speed"). Full fine-tuning: the base model is loaded beside the tuned one."""

    def __init__(self, tuned: Any, base: Any = None) -> None:
        self.tuned, self.base_model, self.model = tuned, base, tuned

    @contextmanager
    def base(self) -> Iterator[None]:
        if self.base_model is None:
            with self.tuned.disable_adapter():
                yield
            self.model = ready_to_answer(self.tuned)
            return
        self.model = self.base_model
        try:
            yield
        finally:
            self.model = self.tuned


def ready_to_answer(tuned: Any) -> Any:
    """A LoRA model as it answers for the tuned figures: fp32 weights merged, 16-bit ones fused (BaseAndTuned)."""
    import torch

    from smoltune.train.fused_lora import fuse_lora_linears

    model = tuned.merge_and_unload() if tuned.dtype == torch.float32 else tuned
    fuse_lora_linears(model)
    return model


def load_one(model_path: str, trust_remote_code: bool, dtype: str | None = None) -> tuple[Any, Any]:
    """One model and its tokenizer in `dtype`, by default the device's (smoltune.model), with the cache-friendly
    decode attention (smoltune.evaluate.attention)."""
    from smoltune.evaluate.attention import register_decode_attention

    return load_model_and_tokenizer(model_path, pick_device(), trust_remote_code, register_decode_attention(), dtype)


def load_tuned(
    model_path: str, output_dir: str, mode: str, trust_remote_code: bool, dtype: str | None = None
) -> tuple[BaseAndTuned, Any]:
    """Base and tuned model in `dtype` (adapters included), loaded as `load_one` loads one."""
    if mode == "lora":
        from peft import PeftModel

        base, tokenizer = load_one(model_path, trust_remote_code, dtype)
        tuned = PeftModel.from_pretrained(base, output_dir, autocast_adapter_dtype=False)
        return BaseAndTuned(tuned), tokenizer
    tuned, tokenizer = load_one(output_dir, trust_remote_code, dtype)
    base, _ = load_one(model_path, trust_remote_code, dtype)
    return BaseAndTuned(tuned, base), tokenizer


def load_tuned_alone(
    model_path: str, output_dir: str, mode: str, trust_remote_code: bool, dtype: str | None = None
) -> tuple[Any, Any]:
    """The tuned model alone, answering as `BaseAndTuned.model` does after `base()`: no base pass, and in full
    fine-tuning no base model beside it (the base is measured in a stage of its own)."""
    if mode == "lora":
        from peft import PeftModel

        base, tokenizer = load_one(model_path, trust_remote_code, dtype)
        return ready_to_answer(PeftModel.from_pretrained(base, output_dir, autocast_adapter_dtype=False)), tokenizer
    return load_one(output_dir, trust_remote_code, dtype)
