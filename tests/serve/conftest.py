"""Fixtures of the engine tests: a "lively" copy of the tiny random llama (its weights redrawn with a larger
spread, so greedy decoding does not repeat one token and a wrong position or mask would change the answer) and
two LoRA adapters made with `get_peft_model(init_lora_weights=False)` + `save_pretrained`, no training."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smoltune.serve.engine import Adapter, Engine


@pytest.fixture(scope="module")
def lively_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path_factory.mktemp("lively")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.25)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def adapter_dirs(lively_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import torch
    from peft import LoraConfig, get_peft_model

    from smoltune.model import load_model_and_tokenizer

    folders = {}
    for seed, name in enumerate(("left", "right")):
        base, _ = load_model_and_tokenizer(str(lively_dir), "cpu")
        torch.manual_seed(100 + seed)
        config = LoraConfig(
            r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        )
        folder = tmp_path_factory.mktemp(name)
        get_peft_model(base, config).save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def make_engine(lively_dir: Path, adapter_dirs: dict[str, str], **kwargs) -> Engine:
    from smoltune.model import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(lively_dir), "cpu")
    engine = Engine(model.eval(), tokenizer, **kwargs)
    for name, folder in adapter_dirs.items():
        engine.add_adapter(Adapter(name, folder, "alpaca"))
    return engine


@pytest.fixture
def new_engine(lively_dir: Path, adapter_dirs: dict[str, str]) -> Iterator:
    """A factory of engines that are all drained at the end of the test."""
    made: list[Engine] = []

    def make(**kwargs) -> Engine:
        made.append(make_engine(lively_dir, adapter_dirs, **kwargs))
        return made[-1]

    yield make
    for engine in made:
        engine.drain(5)
