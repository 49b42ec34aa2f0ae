"""The fast CPU path (smoltune.train.packing): packed rows attend only inside themselves, the labelled-only loss is the
model's own loss, and training with the fast path on or off gives the same losses over the same tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from smoltune.config import TrainConfig
from smoltune.data.tokens import IGNORE_INDEX
from smoltune.train.fast_path import FastPath, fit_packing
from smoltune.train.packing import (
    labelled_token_loss,
    register_segment_attention,
    segment_boundaries,
    with_segment_boundaries,
)
from smoltune.train.sft import sft_settings

ROWS = [
    {"input_ids": [5, 9, 14, 3, 8, 2], "labels": [IGNORE_INDEX] * 3 + [3, 8, 2]},
    {"input_ids": [7, 11, 2], "labels": [IGNORE_INDEX, 11, 2]},
    {"input_ids": [4, 6, 10, 12, 2], "labels": [IGNORE_INDEX] * 2 + [10, 12, 2]},
]


def packed_batch(rows: list[dict]) -> dict:
    """What TRL's padding-free collator produces: one row, positions restarting at 0, first labels ignored."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)


def padded_batch(rows: list[dict]) -> dict:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=0)(rows)


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path) -> tuple:
    """The tiny llama with segment attention and with plain SDPA, same weights, in eval mode."""
    from transformers import AutoModelForCausalLM

    segments = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_segment_attention())
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    return segments.eval(), sdpa.eval()


def test_segment_boundaries_follow_position_restarts() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert segment_boundaries(positions).tolist() == [0, 3, 5, 9]


def test_boundaries_are_added_only_to_packed_batches() -> None:
    packed = with_segment_boundaries(packed_batch(ROWS))
    assert packed["cu_seq_lens_q"].tolist() == [0, 6, 9, 14]
    assert packed["max_length_q"] == 6
    padded = padded_batch(ROWS)
    assert "cu_seq_lens_q" not in with_segment_boundaries(padded)


def test_packed_rows_attend_only_inside_themselves(models: tuple) -> None:
    segments, sdpa = models
    batch = with_segment_boundaries(packed_batch(ROWS))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed_logits = segments(**inputs).logits[0]
        separate = [sdpa(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in ROWS]
        leaky = sdpa(input_ids=batch["input_ids"]).logits[0]  # one causal sequence: rows see earlier rows
    expected = torch.cat(separate)
    assert torch.allclose(packed_logits, expected, atol=1e-5)
    assert not torch.allclose(leaky, expected, atol=1e-3)  # so the check above would catch a leak


def test_segment_attention_without_boundaries_is_plain_sdpa(models: tuple) -> None:
    segments, sdpa = models
    batch = padded_batch(ROWS)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        assert torch.allclose(segments(**inputs).logits, sdpa(**inputs).logits, atol=1e-6)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_labelled_token_loss_is_the_models_loss_with_the_same_gradients(models: tuple, layout: str) -> None:
    segments, _ = models
    batch = padded_batch(ROWS) if layout == "padded" else with_segment_boundaries(packed_batch(ROWS))
    segments.zero_grad()
    ours = labelled_token_loss(segments, batch)
    ours.backward()
    ours_grad = segments.model.layers[0].mlp.up_proj.weight.grad.clone()
    segments.zero_grad()
    theirs = segments(**batch).loss
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    assert torch.allclose(ours_grad, segments.model.layers[0].mlp.up_proj.weight.grad, atol=1e-6)
    segments.zero_grad()


def test_labelled_token_loss_divides_by_the_trainers_item_count(models: tuple) -> None:
    segments, _ = models
    batch = with_segment_boundaries(packed_batch(ROWS))
    with torch.no_grad():
        mean = labelled_token_loss(segments, batch)
        labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        over_accumulation = labelled_token_loss(segments, batch, num_items_in_batch=torch.tensor(2 * labelled))
    assert over_accumulation.item() == pytest.approx(mean.item() / 2, rel=1e-6)


def test_fast_path_applies_to_the_hf_backend_only() -> None:
    config = TrainConfig()
    assert FastPath.for_run(config, "hf") == FastPath(True, True, True, True, True, True)
    assert FastPath.for_run(config, "unsloth") == FastPath()
    unpacked = TrainConfig(speed={"padding_free": False, "pack_accumulation": True})
    assert FastPath.for_run(unpacked, "hf").pack_accumulation is False  # accumulation packing needs padding-free
    assert FastPath.for_run(TrainConfig(mode="full"), "hf").fused_lora is False  # no adapters to fuse


def lora_pair(tiny_model_dir: Path, **lora: object) -> tuple:
    """The tiny llama with LoRA twice (same weights, B made non-zero): PEFT's forward and the fused one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from smoltune.train.fused_lora import fuse_lora_linears

    models = []
    for fuse in (False, True):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], **lora)
        model = get_peft_model(base, config)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05)
        count = fuse_lora_linears(model) if fuse else 0
        models.append((model, count))
    return models


def test_fused_lora_gives_peft_outputs_and_gradients(tiny_model_dir: Path) -> None:
    (peft_model, _), (fused_model, fused) = lora_pair(tiny_model_dir)
    assert fused == 4  # q_proj and down_proj in each of the 2 layers
    batch = padded_batch(ROWS)
    grads = []
    for model in (peft_model, fused_model):
        loss = model(**batch).loss
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        grads[-1]["loss"] = loss.detach()
    assert set(grads[0]) == set(grads[1])
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


@pytest.mark.parametrize("setting", ["bf16 base, fp32 adapters", "bf16 autocast"])
def test_fused_lora_in_16_bits(tiny_model_dir: Path, setting: str) -> None:
    """The two ways smoltune runs in bf16: a bf16 base with PEFT's fp32 adapters (no autocast), and training
    under bf16 autocast. The fused forward matches PEFT's within bf16 rounding, gradients included."""
    (peft_model, _), (fused_model, _) = lora_pair(tiny_model_dir)
    batch = padded_batch(ROWS)
    results = []
    for model in (peft_model, fused_model):
        if setting.startswith("bf16 base"):
            model.get_base_model().to(torch.bfloat16)
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.data = param.data.float()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting == "bf16 autocast"):
            loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
        assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
        results.append((loss.detach().float(), grads))
    (loss_peft, grads_peft), (loss_fused, grads_fused) = results
    assert torch.allclose(loss_peft, loss_fused, rtol=1e-2)
    for name, grad in grads_peft.items():
        assert torch.allclose(grad, grads_fused[name], rtol=0.05, atol=1e-3), name


def test_fused_lora_leaves_dropout_and_dora_to_peft(tiny_model_dir: Path) -> None:
    (_, _), (_, with_dropout) = lora_pair(tiny_model_dir, lora_dropout=0.1)
    (_, _), (_, with_dora) = lora_pair(tiny_model_dir, use_dora=True)
    assert with_dropout == 0 and with_dora == 0


def test_fused_lora_follows_disabled_adapters(tiny_model_dir: Path) -> None:
    (peft_model, _), (fused_model, _) = lora_pair(tiny_model_dir)
    inputs = {"input_ids": torch.tensor([ROWS[0]["input_ids"]])}
    with torch.no_grad(), fused_model.disable_adapter():
        without = fused_model(**inputs).logits
    with torch.no_grad():
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            expected = base(**inputs).logits
    assert torch.allclose(without, expected, atol=1e-6)


def test_a_step_too_long_to_pack_whole_packs_its_micro_batches() -> None:
    fast = FastPath(True, True, True, True, True)
    lengths = [100, 900, 50, 800, 70]
    assert fit_packing(fast, lengths, rows_per_step=2, max_tokens=1700) == fast  # 900 + 800 fit
    smaller = fit_packing(fast, lengths, rows_per_step=2, max_tokens=1699)
    assert smaller == FastPath(True, False, True, True, True)  # still padding-free, per micro-batch


def test_pack_accumulation_keeps_the_rows_per_optimizer_step() -> None:
    config = TrainConfig(batch_size=2, grad_accum=4)
    fast = sft_settings(config, "cpu", "out", FastPath(True, True, True, True, True))
    assert fast["optim"] == "adamw_torch_fused"
    assert (fast["per_device_train_batch_size"], fast["gradient_accumulation_steps"]) == (8, 1)
    assert fast["include_num_input_tokens_seen"] == "all"  # no padding to leave out
    plain = sft_settings(config, "cpu", "out", FastPath())
    assert (plain["per_device_train_batch_size"], plain["gradient_accumulation_steps"]) == (2, 4)
    assert plain["include_num_input_tokens_seen"] == "non_padding" and plain["optim"] == "adamw_torch"


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_both_row_attention_kernels_compute_the_same(dtype: torch.dtype, tolerance: float) -> None:
    """The matmul kernel (stacked query groups, causal mask, fp32 softmax) equals SDPA, gradients included."""
    from smoltune.train.row_attention import matmul_attention, sdpa_attention

    torch.manual_seed(0)
    inputs = [torch.randn(1, heads, 37, 16, dtype=dtype) for heads in (6, 2, 2)]
    results = []
    for kernel in (sdpa_attention, matmul_attention):
        q, k, v = (t.clone().requires_grad_() for t in inputs)
        out = kernel(q, k, v, 0.25)
        (out.float() * torch.linspace(-1, 1, 16)).sum().backward()
        results.append([out.float(), q.grad.float(), k.grad.float(), v.grad.float()])
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_both_kernels_compute_the_same_under_a_mask(dtype: torch.dtype, tolerance: float) -> None:
    """The matmul kernel under an additive (rows, 1, T, T) mask (the shared-prompt pairs' layout: a block the
    later queries may not see, padding that sees only itself) equals SDPA's masked path, gradients included."""
    from smoltune.train.row_attention import matmul_attention, sdpa_attention

    torch.manual_seed(0)
    tokens = 29
    allowed = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    allowed[20:, 12:20] = False  # the rejected answer never sees the chosen one
    allowed[25:, :] = torch.eye(tokens, dtype=torch.bool)[25:]  # padding sees itself
    mask = torch.zeros(2, 1, tokens, tokens, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    inputs = [torch.randn(2, heads, tokens, 16, dtype=dtype) for heads in (6, 2, 2)]
    results = []
    for kernel in (sdpa_attention, matmul_attention):
        q, k, v = (t.clone().requires_grad_() for t in inputs)
        out = kernel(q, k, v, 0.25, mask)
        (out.float() * torch.linspace(-1, 1, 16)).sum().backward()
        results.append([out.float(), q.grad.float(), k.grad.float(), v.grad.float()])
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)


def test_masked_attention_keeps_large_scores_off_the_matmul_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MATMUL_SCORES_BYTES per call the kernel that stores no scores runs, whatever the timing says."""
    from smoltune.train import row_attention

    calls = []
    monkeypatch.setattr(row_attention, "faster_kernel", lambda *a: calls.append(a) or "matmul")
    q, k, v = torch.randn(2, 4, 8, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    mask = torch.zeros(2, 1, 8, 8)
    row_attention.masked_attention(q, k, v, mask, None)
    assert calls and calls[0][-2:] == (2, True)  # timed for this many rows, masked
    monkeypatch.setattr(row_attention, "MATMUL_SCORES_BYTES", 2 * 4 * 8 * 8 * 4 - 1)
    monkeypatch.setitem(row_attention.KERNELS, "matmul", None)  # would fail if called
    out = row_attention.masked_attention(q, k, v, mask, None)
    assert len(calls) == 1 and out.shape == q.shape


def test_the_faster_kernel_is_measured_once_per_shape_and_kept_for_the_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smoltune import machine
    from smoltune.train import row_attention
    from smoltune.train.row_attention import KERNELS, faster_kernel

    monkeypatch.setenv("SMOLTUNE_HOME", str(tmp_path))
    monkeypatch.setattr(machine, "_busy_seconds", lambda: 100.0)  # an idle machine: nothing else ran
    timed = []
    real = row_attention._time_kernels
    monkeypatch.setattr(row_attention, "_time_kernels", lambda *a: timed.append(a) or real(*a))
    faster_kernel.cache_clear()
    with torch.no_grad():  # measured with gradients even inside no_grad / inference code
        choice = faster_kernel("cpu", torch.bfloat16, 6, 2, 16, 64)
    assert choice in KERNELS and faster_kernel("cpu", torch.bfloat16, 6, 2, 16, 64) == choice
    assert faster_kernel.cache_info().hits == 1
    assert faster_kernel("cpu", torch.bfloat16, 6, 2, 16, 64, 2, True) in KERNELS  # masked, two rows: its own
    assert faster_kernel.cache_info().misses == 2 and len(timed) == 2

    # Another process on this machine (the DPO reference's, then the training's) takes the kept choice.
    faster_kernel.cache_clear()
    kept = json.loads((tmp_path / "attention_kernels.json").read_text())
    key = next(k for k in kept if "causal" in k)
    kept[key]["value"] = other = next(k for k in KERNELS if k != choice)  # as if that one had been faster
    (tmp_path / "attention_kernels.json").write_text(json.dumps(kept))
    assert faster_kernel("cpu", torch.bfloat16, 6, 2, 16, 64) == other and len(timed) == 2

    # Measured while another process kept the CPUs busy: used, never kept.
    faster_kernel.cache_clear()
    busy = iter(range(0, 10_000, 50))
    monkeypatch.setattr(machine, "_busy_seconds", lambda: float(next(busy)))
    assert faster_kernel("cpu", torch.float32, 6, 2, 16, 64) in KERNELS and len(timed) == 3
    assert not any("float32" in k for k in json.loads((tmp_path / "attention_kernels.json").read_text()))


def test_row_boundaries_reach_every_layer_as_host_integers(models: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """One device-to-host read per batch: each layer's attention gets the edges as Python ints."""
    from smoltune.train import packing

    seen = []
    original = packing.segment_attention

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(kwargs.get(packing.ROW_EDGES))
        return original(*args, **kwargs)

    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, packing.SEGMENT_ATTENTION, spy)
    segments, _ = models
    batch = with_segment_boundaries(packed_batch(ROWS))
    with torch.no_grad():
        segments(**{k: v for k, v in batch.items() if k != "labels"})
    assert seen == [(0, 6, 9, 14)] * segments.config.num_hidden_layers


def test_labelled_positions_come_from_the_host_and_change_nothing(
    models: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collator finds where labels are while the batch is on the host; the loss then never calls `nonzero`
    (on a GPU a wait for the device per forward) and computes what it computes without them."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from smoltune.train.packing import LABELLED_POSITIONS, BoundaryCollator

    segments, _ = models
    collate = BoundaryCollator(
        DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True), labelled_positions=True
    )
    batch = collate(ROWS)
    assert batch[LABELLED_POSITIONS].tolist() == [2, 3, 4, 6, 7, 10, 11, 12]  # each row's answer, shifted by one
    with torch.no_grad():
        reference = labelled_token_loss(segments, with_segment_boundaries(packed_batch(ROWS)))

        def no_nonzero(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise AssertionError("labelled_token_loss looked for labels itself")

        monkeypatch.setattr(torch.Tensor, "nonzero", no_nonzero)
        given = labelled_token_loss(segments, batch)
    assert given.item() == pytest.approx(reference.item(), abs=1e-7)


def test_rows_split_from_the_packed_sequence_get_each_rows_own_gradients() -> None:
    """segment_attention takes rows by `split` (one concatenation backward, not a zeroed full copy per row):
    outputs and q/k/v gradients equal attention computed on each row apart."""
    from types import SimpleNamespace

    from smoltune.train.packing import ROW_EDGES, segment_attention

    torch.manual_seed(0)
    sizes, heads, kv_heads, dim = [5, 9, 3], 4, 2, 8
    edges = [0, 5, 14, 17]
    packed = [torch.randn(1, 17, h, dim).transpose(1, 2).requires_grad_() for h in (heads, kv_heads, kv_heads)]
    out, _ = segment_attention(
        SimpleNamespace(training=True), *packed, None, cu_seq_lens_q=torch.tensor(edges), **{ROW_EDGES: edges}
    )
    upstream = torch.randn_like(out)
    out.backward(upstream)
    apart = [t.detach().clone().requires_grad_() for t in packed]
    rows = [
        F.scaled_dot_product_attention(*(t[:, :, a:b] for t in apart), is_causal=True, enable_gqa=True)
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    expected = torch.cat(rows, dim=2).transpose(1, 2)
    expected.backward(upstream)
    assert sum(sizes) == 17 and torch.allclose(out, expected, atol=1e-6)
    for ours, theirs in zip(packed, apart, strict=True):
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-6)
