"""Packed-row attention kernels (smoltune.train.segment_kernels): which one runs where, and each computing the
loss the per-row path and the model's own padded loss compute. flex_attention runs here for real (compiled
forward; torch has no CPU backward for it); flash-attn is CUDA only, so here a stand-in with its signature
checks what the model hands it, and tests/train/test_gpu.py runs the real kernels' gradients on a GPU."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from smoltune.errors import ConfigError
from smoltune.train import segment_kernels
from smoltune.train.packing import (
    BoundaryCollator,
    labelled_token_loss,
    register_segment_attention,
    with_segment_boundaries,
)
from smoltune.train.segment_kernels import resolve_segment_kernel
from tests.train.test_packing import ROWS, packed_batch, padded_batch


def load(model_dir: Path, attention: str):  # noqa: ANN201
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention).eval()


@pytest.mark.parametrize(
    ("requested", "device", "precision", "packages", "kernel"),
    [
        ("auto", "cpu", "bf16", {"flash_attn", "triton"}, "rows"),
        ("auto", "cuda", "bf16", {"flash_attn", "triton"}, "flash"),
        ("auto", "cuda", "fp16", {"flash_attn", "triton"}, "flash"),
        ("auto", "cuda", "fp32", {"flash_attn", "triton"}, "rows"),  # flash-attn has no fp32 kernel
        ("auto", "cuda", "bf16", {"triton"}, "rows"),  # the H200 image: Triton, no flash-attn; flex compiles
        ("auto", "cuda", "bf16", set(), "rows"),
        ("rows", "cuda", "bf16", {"flash_attn", "triton"}, "rows"),
        ("flex", "cuda", "fp32", {"triton"}, "flex"),
    ],
)
def test_the_kernel_follows_device_precision_and_packages(
    monkeypatch: pytest.MonkeyPatch, requested: str, device: str, precision: str, packages: set, kernel: str
) -> None:
    monkeypatch.setattr(segment_kernels, "installed", lambda package: package in packages)
    monkeypatch.setattr(segment_kernels, "cuda_capability", lambda: (9, 0))  # an H100 / H200
    chosen, reason = resolve_segment_kernel(requested, device, precision)
    assert chosen == kernel and reason


def test_the_seeds_t4_has_no_flash_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_kernels, "installed", lambda package: True)
    monkeypatch.setattr(segment_kernels, "cuda_capability", lambda: (7, 5))
    kernel, reason = resolve_segment_kernel("auto", "cuda", "fp16")
    assert kernel == "rows" and "this card is 7.5" in reason
    with pytest.raises(ConfigError, match="needs an Ampere or newer GPU"):
        resolve_segment_kernel("flash", "cuda", "fp16")


def test_a_kernel_that_cannot_run_here_is_refused_with_every_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_kernels, "installed", lambda package: False)
    with pytest.raises(ConfigError) as raised:
        resolve_segment_kernel("flash", "cpu", "fp32")
    assert len(raised.value.problems) == 3  # no GPU, no flash-attn, not 16-bit
    with pytest.raises(ConfigError, match="segment_kernel=flex needs a CUDA GPU; this machine trains on cpu"):
        resolve_segment_kernel("flex", "cpu", "bf16")
    with pytest.raises(ConfigError, match="needs Triton"):
        resolve_segment_kernel("flex", "cuda", "bf16")


def test_the_collator_computes_row_boundaries_on_the_host() -> None:
    """The boundaries travel with the batch (the Trainer moves them with the rest), so no layer reads the
    device; a batch that has them is not recomputed."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = BoundaryCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))(ROWS)
    assert batch["cu_seq_lens_q"].tolist() == [0, 6, 9, 14] and batch["max_length_q"] == 6
    assert batch["smoltune_row_edges"] == (0, 6, 9, 14)
    assert with_segment_boundaries(batch) is batch


def test_flex_document_mask_computes_the_rows_loss(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flex_attention (compiled, as on a GPU) with the document mask gives the per-row path's loss and the padded
    model's, and the mask is built once per batch, not once per layer."""
    built = []
    original = segment_kernels.document_mask
    monkeypatch.setattr(segment_kernels, "document_mask", lambda *a: built.append(a) or original(*a))
    flex, rows = load(tiny_model_dir, register_segment_attention("flex")), load(tiny_model_dir, "sdpa")
    rows.load_state_dict(flex.state_dict())
    with torch.no_grad():
        packed = with_segment_boundaries(packed_batch(ROWS))
        ours = labelled_token_loss(flex, packed)
        theirs = rows(**padded_batch(ROWS)).loss
        again = labelled_token_loss(flex, with_segment_boundaries(packed_batch(list(reversed(ROWS)))))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert len(built) == 2  # two batches, two layers each: one mask per batch
    torch.testing.assert_close(again, ours, rtol=1e-5, atol=1e-6)  # the second batch's own mask, not the first's


def per_row_reference(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal
):  # noqa: ANN001, ANN201
    """flash_attn_varlen_func's contract, (tokens, heads, dim) layout, written out row by row."""
    edges = cu_seqlens_q.tolist()
    groups = q.shape[1] // k.shape[1]
    out = []
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        qs, ks, vs = (t[start:end].transpose(0, 1).float() for t in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        scores = (qs @ ks.transpose(1, 2)) * softmax_scale
        future = torch.ones(end - start, end - start, dtype=torch.bool).triu(1)
        out.append((scores.masked_fill(future, float("-inf")).softmax(-1) @ vs).transpose(0, 1))
    return torch.cat(out).to(q.dtype)


def test_flash_varlen_gets_the_packed_rows_in_its_layout(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the model hands flash-attn: 16-bit (tokens, heads, dim) tensors, the int32 row boundaries and the
    longest row, causal, the head scale; with flash-attn's contract done row by row the loss is the per-row
    path's under the same autocast."""
    calls = []

    def varlen(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append({**kwargs, "dtypes": {t.dtype for t in args}})
        return per_row_reference(*args, **kwargs)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=varlen))
    flash, rows = load(tiny_model_dir, register_segment_attention("flash")), load(tiny_model_dir, "sdpa")
    rows.load_state_dict(flash.state_dict())
    packed = with_segment_boundaries(packed_batch(ROWS))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours = labelled_token_loss(flash, packed)
        theirs = rows(**padded_batch(ROWS)).loss
    assert len(calls) == flash.config.num_hidden_layers
    call = calls[0]
    assert call["cu_seqlens_q"].dtype == torch.int32 and call["cu_seqlens_q"].tolist() == [0, 6, 9, 14]
    assert call["dtypes"] == {torch.bfloat16}
    assert call["max_seqlen_q"] == 6 and call["causal"] is True and call["dropout_p"] == 0.0
    head_dim = flash.config.hidden_size // flash.config.num_attention_heads
    assert call["softmax_scale"] == pytest.approx(head_dim**-0.5)
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-2, atol=2e-2)


def test_q_k_v_reach_the_kernels_in_one_dtype() -> None:
    """Under autocast PEFT's upcast norms hand q and k over in fp32 beside a 16-bit v: the kernels get the
    autocast dtype, as transformers casts for its own; without autocast, the widest."""
    from smoltune.train.segment_kernels import attention_dtype

    fp32, bf16 = torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention_dtype(fp32, fp32, bf16) == torch.bfloat16
        assert attention_dtype(bf16, bf16, bf16) == torch.bfloat16
    assert attention_dtype(fp32, fp32, fp32) == torch.float32
    assert attention_dtype(fp32, bf16, bf16) == torch.float32


def test_flex_gets_one_dtype_under_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for transformers' flex_attention_forward that refuses mixed dtypes as torch's flex_attention does
    ("Expected query, key, and value to have the same dtype"); flex_rows must never trip it."""
    import transformers.integrations.flex_attention as flex_module

    from smoltune.train import segment_kernels

    seen = []

    def flex_attention_forward(module, query, key, value, mask, scaling):  # noqa: ANN001, ANN202
        if not query.dtype == key.dtype == value.dtype:
            raise ValueError("Expected query, key, and value to have the same dtype")
        seen.append(query.dtype)
        return query.transpose(1, 2), None

    monkeypatch.setattr(flex_module, "flex_attention_forward", flex_attention_forward)
    monkeypatch.setattr(segment_kernels.DOCUMENT_MASKS, "for_rows", lambda boundaries, length: None)
    q = k = torch.randn(1, 2, 6, 8)
    v = torch.randn(1, 2, 6, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = segment_kernels.flex_rows(None, q, k, v, torch.tensor([0, 2, 6]), 0.35)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
