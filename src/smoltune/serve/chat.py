"""Talk to a trained run: the base model with the run's adapter (or its fully fine-tuned model).

smoltune chat runs/<run>                       # interactive; an empty line or Ctrl-D ends
smoltune chat runs/<run> --prompt "Add the two numbers: 3 and 4"
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import Any

from smoltune.data.prompts import format_prompt
from smoltune.errors import ModelError, SmoltuneError
from smoltune.serve.engine import run_template


class RunNotFoundError(SmoltuneError, FileNotFoundError):
    """The folder is not a finished run (no summary.json)."""

    exit_code = 2


def load_run(run_dir: str | Path) -> tuple[Any, Any, str]:
    """(model, tokenizer, template) of a finished run."""
    from smoltune.evaluate.generation import load_tuned

    folder = Path(run_dir)
    summary_file = folder / "summary.json"
    if not summary_file.is_file():
        raise RunNotFoundError(f"{folder}: no summary.json; pass the folder a finished `smoltune run` printed")
    summary = json.loads(summary_file.read_text())
    template = run_template(folder)  # only the template: the run's other settings may need what chat does not
    artifacts = summary["artifacts"]
    output_dir = artifacts.get("adapter_dir") or artifacts["model_dir"]
    models, tokenizer = load_tuned(summary["model"]["path"], output_dir, summary["train"]["mode"], False)
    return models.model, tokenizer, template


def stream_answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> Iterator[str]:
    """Greedy answer to an already formatted prompt, yielded piece by piece as it is generated."""
    from transformers import TextIteratorStreamer

    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {
        **inputs,
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "streamer": streamer,
        "pad_token_id": tokenizer.pad_token_id,
    }
    failed: list[BaseException] = []

    def generate() -> None:
        # An exception here would leave the streamer waiting forever: end the stream and hand the error over.
        try:
            model.generate(**kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread below
            failed.append(err)
            streamer.end()

    worker = Thread(target=generate, daemon=True)
    worker.start()
    yield from streamer
    worker.join()
    if failed:
        raise ModelError(f"generation failed: {type(failed[0]).__name__}: {failed[0]}") from failed[0]


def answer_prompt(model: Any, tokenizer: Any, template: str, instruction: str, max_new_tokens: int) -> Iterator[str]:
    prompt = format_prompt({"instruction": instruction, "input": ""}, template, tokenizer)
    return stream_answer(model, tokenizer, prompt, max_new_tokens)
