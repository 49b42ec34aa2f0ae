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


def test_a_failing_generation_reaches_the_reader_instead_of_hanging(tiny_model_dir: Path) -> None:
    """`smoltune chat --max-new-tokens 0` used to raise inside the generation thread while the reader waited on
    the streamer forever; any exception there now ends the stream and is raised to the reader."""
    import threading

    import pytest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smoltune.errors import ModelError

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            list(stream_answer(model, tokenizer, "hi", max_new_tokens=-1))  # generate raises at once
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            outcome.append(err)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive(), "the reader hung on the streamer"
    assert len(outcome) == 1 and isinstance(outcome[0], ModelError) and "generation failed" in str(outcome[0])
    with pytest.raises(ModelError):
        list(stream_answer(model, tokenizer, "hi", max_new_tokens=-1))


def test_chat_refuses_a_zero_token_answer() -> None:
    from typer.testing import CliRunner

    from smoltune.cli import app

    result = CliRunner().invoke(app, ["chat", "runs/none", "--max-new-tokens", "0"])
    assert result.exit_code == 2 and "max-new-tokens" in result.output
