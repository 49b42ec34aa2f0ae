"""What only a CUDA GPU can show: the precision rule on a real card, training in bf16 and in forced fp16 (the
seed's T4 path) with finite, matching losses, the Unsloth backend, and the fast path and the fast evaluation
computing on CUDA what they compute on the CPU. Marked `gpu`: skipped without CUDA (tests/conftest.py), run on
a GPU machine by `make gpu-check` (bench/gpu_check.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from smoltune.config import TrainConfig

pytestmark = pytest.mark.gpu


def rows_file(tmp_path: Path) -> str:
    from smoltune.data.builtin import generate_rows
    from smoltune.data.prompts import to_prompt_completion
    from smoltune.files import write_jsonl

    return str(write_jsonl(tmp_path / "train.jsonl", [to_prompt_completion(r) for r in generate_rows(32, seed=2)]))


def train_tiny(model_dir: Path, tmp_path: Path, name: str, **settings: object):  # noqa: ANN201
    from smoltune.train.runner import train_in_subprocess
    from smoltune.train.spec import TrainSpec

    config = TrainConfig(max_steps=4, warmup_steps=0, batch_size=2, grad_accum=2, **settings)
    spec = TrainSpec(str(model_dir), rows_file(tmp_path), str(tmp_path / name), config.model_dump(mode="json"))
    return train_in_subprocess(spec)


def test_auto_precision_follows_this_card(tiny_model_dir: Path) -> None:
    import torch

    from smoltune.train.precision import resolve_precision

    chosen = resolve_precision("cuda", "lora", "auto", tiny_model_dir)
    assert chosen.name == ("bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16")
    assert resolve_precision("cuda", "full", "auto", tiny_model_dir).load_dtype == "float32"


def test_bf16_and_forced_fp16_train_alike(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The T4's path (fp16 with loss scaling, fp32 adapters over an fp16 base) on this card, against bf16."""
    results = {p: train_tiny(tiny_model_dir, tmp_path, p, backend="hf", precision=p) for p in ("bf16", "fp16")}
    for name, result in results.items():
        assert result.device == "cuda" and result.precision == name
        assert all(math.isfinite(x) for x in result.losses)
        assert result.settings["fp16"] is (name == "fp16") and result.settings["bf16"] is (name == "bf16")
    assert results["fp16"].losses == pytest.approx(results["bf16"].losses, rel=0.03)


def test_full_fine_tuning_keeps_fp32_master_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    result = train_tiny(tiny_model_dir, tmp_path, "full", backend="hf", mode="full")
    assert all(math.isfinite(x) for x in result.losses)
    weights = load_file(Path(result.output_dir) / "model.safetensors")
    assert {str(t.dtype) for t in weights.values()} == {"torch.float32"}


def test_unsloth_backend_trains_every_lora_option(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = train_tiny(
        tiny_model_dir, tmp_path, "unsloth", backend="unsloth", lora={"use_dora": True, "use_rslora": True}
    )
    assert result.backend == "unsloth" and all(math.isfinite(x) for x in result.losses)
    adapter = (Path(result.output_dir) / "adapter_config.json").read_text()
    assert '"use_dora": true' in adapter and '"use_rslora": true' in adapter


def test_fast_path_loss_equals_the_models_own_on_cuda(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from smoltune.train.packing import labelled_token_loss, register_segment_attention, with_segment_boundaries
    from tests.train.test_packing import ROWS, packed_batch, padded_batch

    segments = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_segment_attention())
    packed = on_cuda(with_segment_boundaries(packed_batch(ROWS)))
    padded = on_cuda(padded_batch(ROWS))
    model = segments.cuda().eval()
    with torch.no_grad():
        ours = labelled_token_loss(model, packed)
        theirs = model(**padded).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def on_cuda(batch: dict) -> dict:
    return {k: v.cuda() if hasattr(v, "cuda") else v for k, v in batch.items()}


@pytest.mark.parametrize("kernel", ["rows", "flex", "flash"])
def test_each_packed_kernel_gives_the_padded_loss_and_gradients(tiny_model_dir: Path, kernel: str) -> None:
    """Per-row SDPA, flex_attention with a document mask (compiled for training), FlashAttention-2 varlen (where
    flash-attn is installed): the padded model's loss and gradients under bf16 autocast, backward included."""
    import torch
    from transformers import AutoModelForCausalLM

    from smoltune.train.packing import BoundaryCollator, labelled_token_loss, register_segment_attention
    from tests.train.test_packing import ROWS, packed_batch, padded_batch

    if kernel == "flash":
        pytest.importorskip("flash_attn")
    ours = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_segment_attention(kernel))
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    ours, plain = ours.cuda().train(), plain.cuda().train()
    packed = on_cuda(BoundaryCollator(packed_batch)(ROWS))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = labelled_token_loss(ours, packed)
        reference = plain(**on_cuda(padded_batch(ROWS))).loss
    loss.backward()
    reference.backward()
    torch.testing.assert_close(loss.float(), reference.float(), rtol=2e-2, atol=2e-2)
    for (name, a), b in zip(ours.named_parameters(), plain.parameters(), strict=True):
        cosine = torch.nn.functional.cosine_similarity(a.grad.flatten().float(), b.grad.flatten().float(), dim=0)
        assert cosine > 0.99, name


@pytest.mark.parametrize("kernel", ["rows", "flex", "flash"])
def test_no_layers_attention_waits_for_the_gpu(
    tiny_model_dir: Path, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the boundaries from the collator, no layer's attention call synchronises with the device: torch's
    sync debug mode turns any such call into an error (after a warm-up batch: the row kernels' one-off timing
    and flex's compilation; the second batch has other row lengths, so flex builds a new mask)."""
    import torch
    from transformers import AttentionInterface, AutoModelForCausalLM

    from smoltune.train.packing import (
        ATTENTION_NAMES,
        BoundaryCollator,
        labelled_token_loss,
        register_segment_attention,
    )
    from tests.train.test_packing import ROWS, packed_batch

    if kernel == "flash":
        pytest.importorskip("flash_attn")
    name = register_segment_attention(kernel)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=name).cuda().train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        labelled_token_loss(model, on_cuda(BoundaryCollator(packed_batch)(ROWS))).backward()
    original = AttentionInterface._global_mapping[ATTENTION_NAMES[kernel]]

    def strict(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setitem(AttentionInterface._global_mapping, ATTENTION_NAMES[kernel], strict)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = labelled_token_loss(model, on_cuda(BoundaryCollator(packed_batch)(list(reversed(ROWS)))))
    assert torch.isfinite(loss)


def test_training_with_one_call_per_layer_matches_per_row_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    """flex_attention (and FlashAttention-2 where installed) trains the losses per-row attention trains."""
    from smoltune.train.segment_kernels import installed

    kernels = ["rows", "flex", *(["flash"] if installed("flash_attn") else [])]
    runs = {
        kernel: train_tiny(
            tiny_model_dir, tmp_path, kernel, backend="hf", precision="bf16", speed={"segment_kernel": kernel}
        )
        for kernel in kernels
    }
    for kernel, result in runs.items():
        assert result.settings["fast_path"]["segment_kernel"] == kernel
        assert result.tokens_seen == runs["rows"].tokens_seen
        assert result.losses == pytest.approx(runs["rows"].losses, rel=0.03), kernel


def test_fast_generation_equals_each_row_alone_on_cuda(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smoltune.evaluate.attention import register_decode_attention
    from smoltune.evaluate.generation import generate_answers
    from tests.evaluate.test_evaluation_speed import PROMPTS

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fast = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_decode_attention())
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").cuda().eval()
    expected = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].cuda()
        out = plain.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    assert generate_answers(fast.cuda().eval(), tokenizer, PROMPTS, 12, 3) == expected


@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_qlora_trains_and_its_adapter_loads_on_the_16_bit_base(
    tiny_model_dir: Path, tmp_path: Path, backend: str
) -> None:
    from smoltune.config import EvalConfig
    from smoltune.data.builtin import generate_rows
    from smoltune.data.prompts import to_prompt_completion
    from smoltune.evaluate.stage import EvalRequest, evaluate_tuned
    from smoltune.files import write_jsonl
    from smoltune.train.runner import train_in_subprocess
    from smoltune.train.spec import TrainSpec

    config = TrainConfig(max_steps=4, warmup_steps=0, batch_size=2, grad_accum=2, backend=backend)
    spec = TrainSpec(str(tiny_model_dir), rows_file(tmp_path), str(tmp_path / backend), config.model_dump(mode="json"),
                     load_in_4bit=True)  # fmt: skip
    result = train_in_subprocess(spec)
    assert result.settings["load_in_4bit"] and all(math.isfinite(x) for x in result.losses)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{**r, **to_prompt_completion(r)} for r in generate_rows(4)])
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("prompts:\n  - Say hi.\n")
    request = EvalRequest(str(tiny_model_dir), result.output_dir, "lora", str(eval_file),
                          EvalConfig(prompts_file=str(prompts)), "alpaca", 256, precision=result.precision)  # fmt: skip
    figures, _, _ = evaluate_tuned(request)  # the evaluation loads the base in 16 bits: the adapter must fit it
    assert math.isfinite(figures.eval_loss_tuned)
