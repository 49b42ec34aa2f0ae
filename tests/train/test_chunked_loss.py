"""The chunked LM head + cross-entropy (smoltune.train.chunked_loss) computes the same loss and the same gradients
as the full logits' cross-entropy, and is used only where that holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from smoltune.data.tokens import IGNORE_INDEX
from smoltune.train import chunked_loss, packing
from smoltune.train.chunked_loss import (
    cache_size_bytes,
    chunk_rows,
    chunkable_head,
    head_bypassed,
    linear_cross_entropy,
)
from smoltune.train.packing import labelled_token_loss, register_segment_attention, with_segment_boundaries
from tests.train.test_packing import ROWS, packed_batch, padded_batch


def reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((hidden @ weight.t()).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, 40),
    vocab=st.integers(2, 50),
    rows=st.integers(1, 16),
    ignored=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_equals_the_full_cross_entropy_with_the_same_gradient(
    tokens: int, vocab: int, rows: int, ignored: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, 8, generator=generator)
    weight = torch.randn(vocab, 8, generator=generator)
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[torch.rand(tokens, generator=generator) < ignored] = IGNORE_INDEX
    ours_input, theirs_input = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    ours = linear_cross_entropy(ours_input, weight, targets, rows)
    theirs = reference(theirs_input, weight, targets)
    (ours * 0.37).backward()  # a scale, as the mean over items and gradient accumulation apply
    (theirs * 0.37).backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)  # fp32, summed in another order
    assert torch.allclose(ours_input.grad, theirs_input.grad, rtol=1e-5, atol=1e-6)


def test_bf16_matches_the_autocast_path_within_rounding() -> None:
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(300, 64, generator=generator).bfloat16()
    weight = (torch.randn(1000, 64, generator=generator) * 0.1).bfloat16()
    targets = torch.randint(0, 1000, (300,), generator=generator)
    ours_input, theirs_input = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(ours_input, weight, targets, 64)
        theirs = reference(theirs_input, weight, targets)
    (ours / 300).backward()
    (theirs / 300).backward()
    assert ours.dtype == torch.float32 and ours_input.grad.dtype == torch.bfloat16
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert torch.allclose(ours_input.grad.float(), theirs_input.grad.float(), rtol=2e-2, atol=1e-6)


def test_without_gradients_only_the_loss_is_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, weight = torch.randn(5, 4, requires_grad=True), torch.randn(7, 4)
    targets = torch.tensor([1, IGNORE_INDEX, 3, 6, 0])
    expected = reference(hidden, weight, targets).item()
    calls = []
    matmul = torch.matmul
    monkeypatch.setattr(torch, "matmul", lambda *args: calls.append(1) or matmul(*args))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, 2)
    assert not loss.requires_grad and len(calls) == 3  # the head's matmul per chunk, no gradient matmul
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_a_non_finite_hidden_state_at_an_ignored_target_does_not_reach_the_loss() -> None:
    hidden, weight = torch.randn(4, 4), torch.randn(6, 4)
    hidden[1] = float("nan")
    targets = torch.tensor([2, IGNORE_INDEX, 5, 0])
    assert linear_cross_entropy(hidden, weight, targets, 3).item() == pytest.approx(
        reference(hidden, weight, targets).item(), rel=1e-6
    )


def test_cache_sizes_as_sysfs_writes_them() -> None:
    assert cache_size_bytes("32768K\n") == 32 << 20
    assert cache_size_bytes(" 1M") == 1 << 20
    assert cache_size_bytes("512") == 512
    assert cache_size_bytes("1.5M") is None and cache_size_bytes("") is None and cache_size_bytes("32768KB") is None


def test_chunks_fit_the_cache_on_a_cpu_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked_loss, "last_level_cache_bytes", lambda: 32 << 20)
    assert chunk_rows(49152, torch.device("cpu")) == 128  # 128 x 49,152 fp32 logits = 24 MiB <= 32 MiB
    assert chunk_rows(10**7, torch.device("cpu")) == 16  # never fewer
    assert chunk_rows(8, torch.device("cpu")) == 4096  # never more
    assert chunk_rows(49152, torch.device("cuda")) == 4096


@pytest.fixture(scope="module")
def frozen_head_model(tiny_model_dir: Path):  # noqa: ANN201
    """The tiny llama with segment attention and its LM head frozen, as under LoRA."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_segment_attention())
    model.get_output_embeddings().weight.requires_grad_(False)
    return model.eval()


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_labelled_token_loss_chunked_is_unchunked(
    frozen_head_model, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    monkeypatch.setattr(chunked_loss, "chunk_rows", lambda vocab, device: 2)  # several chunks, one cut short
    used = []
    monkeypatch.setattr(packing, "linear_cross_entropy", lambda *args: used.append(1) or linear_cross_entropy(*args))
    model = frozen_head_model
    batch = padded_batch(ROWS) if layout == "padded" else with_segment_boundaries(packed_batch(ROWS))
    results = []
    for chunked in (True, False):
        model.zero_grad()
        loss = labelled_token_loss(model, batch, chunked=chunked)
        loss.backward()
        results.append((loss.item(), model.model.layers[0].mlp.up_proj.weight.grad.clone()))
    (ours, ours_grad), (theirs, theirs_grad) = results
    assert used == [1]  # the chunked run took the chunked path, the other did not
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert torch.allclose(ours_grad, theirs_grad, atol=1e-6)
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)  # the head is back after the call


def test_through_a_peft_adapter_the_adapter_gets_the_same_gradients(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_segment_attention())
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "up_proj"], init_lora_weights=False))
    assert chunkable_head(peft_model) is model.get_output_embeddings()
    batch = with_segment_boundaries(packed_batch(ROWS))
    grads = []
    for chunked in (True, False):
        peft_model.zero_grad()
        labelled_token_loss(peft_model, batch, chunked=chunked).backward()
        grads.append([p.grad.clone() for p in peft_model.parameters() if p.requires_grad])
    assert len(grads[0]) == 8 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


def test_heads_it_would_compute_wrongly_are_refused(frozen_head_model) -> None:  # noqa: ANN001
    model = frozen_head_model
    head = model.get_output_embeddings()
    assert chunkable_head(model) is head
    head.weight.requires_grad_(True)  # full fine-tuning (or a trained head): its gradient is not computed here
    try:
        assert chunkable_head(model) is None
    finally:
        head.weight.requires_grad_(False)
    hook = head.register_forward_hook(lambda module, args, output: output * 2)  # something runs on its output
    try:
        assert chunkable_head(model) is None
    finally:
        hook.remove()
    assert chunkable_head(model) is head


def test_models_that_transform_their_logits_are_refused() -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    small = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    small |= {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}
    gemma2 = Gemma2ForCausalLM(Gemma2Config(**small))  # softcaps its logits after the head
    gemma2.get_output_embeddings().weight.requires_grad_(False)
    assert chunkable_head(gemma2) is None

    class RemoteLlama(LlamaForCausalLM):  # same name, another module: its forward may differ
        pass

    RemoteLlama.__name__ = "LlamaForCausalLM"
    remote = RemoteLlama(LlamaConfig(**small))
    remote.get_output_embeddings().weight.requires_grad_(False)
    assert chunkable_head(remote) is None
    llama = LlamaForCausalLM(LlamaConfig(**small))
    llama.get_output_embeddings().weight.requires_grad_(False)
    assert chunkable_head(llama) is llama.get_output_embeddings()


def test_a_lora_wrapped_head_is_refused(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    assert chunkable_head(peft_model) is None


def test_the_head_is_restored_when_the_forward_fails(frozen_head_model) -> None:  # noqa: ANN001
    model = frozen_head_model
    head = model.get_output_embeddings()
    with pytest.raises(RuntimeError, match="boom"), head_bypassed(model, head):
        assert isinstance(model.get_output_embeddings(), torch.nn.Identity)
        raise RuntimeError("boom")
    assert model.get_output_embeddings() is head
