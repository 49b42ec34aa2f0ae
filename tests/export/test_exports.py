"""Exports: the merged 16-bit model loads without peft and answers like base + adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoltune.config import DataConfig, TrainConfig
from smoltune.data.builtin import generate_rows
from smoltune.data.stage import prepare_dataset
from smoltune.export.weights import export_merged
from smoltune.files import write_jsonl
from smoltune.train.runner import train_in_subprocess
from smoltune.train.spec import TrainSpec


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("export")
    raw = write_jsonl(folder / "raw.jsonl", generate_rows(40, seed=9))
    prepared = prepare_dataset(raw, DataConfig(num_samples=16, eval_samples=4), folder)
    config = TrainConfig(max_steps=2, warmup_steps=0, batch_size=2, grad_accum=1, learning_rate=5e-3)
    spec = TrainSpec(str(tiny_model_dir), prepared.train_file, str(folder / "work"), config.model_dump())
    return train_in_subprocess(spec).output_dir


def test_merged_model_matches_base_plus_adapter(tiny_model_dir: Path, adapter_dir: str, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = export_merged(str(tiny_model_dir), adapter_dir, tmp_path / "merged")
    files = {p.name for p in merged_dir.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.dtype == torch.bfloat16 and not hasattr(merged, "peft_config")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        actual = merged.float()(input_ids=ids).logits
    assert torch.allclose(actual, expected, atol=0.05)  # bf16 storage rounds the weights


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_gguf_round_trips_through_transformers(
    tiny_model_dir: Path, adapter_dir: str, tmp_path: Path, qtype: str
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smoltune.export.weights import export_gguf

    merged_dir = export_merged(str(tiny_model_dir), adapter_dir, tmp_path / "merged")
    gguf_file = export_gguf(merged_dir, tmp_path / f"model-{qtype}.gguf", qtype)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    reloaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    for prompt in ["Add the two numbers.", "Write the word backwards: planet", "Sort these numbers: 5, 2, 9"]:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        if qtype == "f16":  # bf16 weights are exact in f16: the same model, so the same greedy answers
            kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
            assert torch.equal(merged.generate(ids, **kwargs), reloaded.generate(ids, **kwargs)), prompt
        else:  # 8-bit blocks round every weight: the logits stay close
            with torch.no_grad():
                expected, actual = merged(ids).logits, reloaded(ids).logits
            assert (actual - expected).abs().max() < 0.05 * expected.abs().max()


def test_gguf_reads_back_with_every_tensor_and_the_pre_tokenizer(
    tiny_model_dir: Path, adapter_dir: str, tmp_path: Path
) -> None:
    import math

    import gguf
    from safetensors import safe_open

    from smoltune.export.weights import export_gguf

    merged_dir = export_merged(str(tiny_model_dir), adapter_dir, tmp_path / "merged")
    reader = gguf.GGUFReader(export_gguf(merged_dir, tmp_path / "model.gguf", "f16"))
    pre = reader.fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[pre.data[0]]).decode() == "default"  # the tiny tokenizer is not SmolLM's
    with safe_open(merged_dir / "model.safetensors", "pt") as weights:
        names = [n for n in weights.keys() if n != "lm_head.weight"]  # tied: stored once, as the embedding
        shapes = {n: tuple(weights.get_slice(n).get_shape()) for n in names}
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(names)
    by_size = sorted(int(t.n_elements) for t in tensors.values())
    assert by_size == sorted(int(math.prod(s)) for s in shapes.values())
