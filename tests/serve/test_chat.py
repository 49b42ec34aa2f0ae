"""Streaming answers: the pieces streamed add up to the greedy answer."""

from __future__ import annotations

from pathlib import Path

from smoltune.data.prompts import format_prompt
from smoltune.serve.chat import stream_answer


def test_streamed_pieces_equal_the_greedy_answer(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = format_prompt({"instruction": "Add the two numbers.", "input": "3 and 4"})
    pieces = list(stream_answer(model, tokenizer, prompt, max_new_tokens=8))
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "".join(pieces) == expected and len(pieces) >= 1
