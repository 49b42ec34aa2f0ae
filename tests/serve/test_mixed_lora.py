"""Rows routed to their own adapters (smoltune.serve.mixed_lora) compute what PEFT's mixed batch computes.

Stand-ins: the tiny random llama and adapters made with `init_lora_weights=False` (random, untrained), of two
ranks and two sets of target modules, so a row's adapter can be absent from a layer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smoltune.serve.mixed_lora import install, routing_of

TARGETS = {"left": (4, ["q_proj", "v_proj", "down_proj"]), "right": (8, ["q_proj", "k_proj", "o_proj", "up_proj"])}
ROWS = ["left", None, "right", "left"]


def peft_model(tiny_model_dir: Path, tmp_path: Path, dora: bool = False):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from smoltune.model import load_model_and_tokenizer

    for seed, (name, (rank, targets)) in enumerate(TARGETS.items()):
        base, _ = load_model_and_tokenizer(str(tiny_model_dir), "cpu")
        torch.manual_seed(seed)
        config = LoraConfig(
            r=rank, lora_alpha=16, target_modules=targets, init_lora_weights=False, use_dora=dora and name == "right"
        )
        get_peft_model(base, config).save_pretrained(tmp_path / name)
    base, _ = load_model_and_tokenizer(str(tiny_model_dir), "cpu")
    model = PeftModel.from_pretrained(base, tmp_path / "left", adapter_name="left")
    model.load_adapter(tmp_path / "right", adapter_name="right")
    return model.eval()


def test_routed_rows_equal_peft_mixed_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    model = peft_model(tiny_model_dir, tmp_path)
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (len(ROWS), 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row, as a prefill pads them
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask, adapter_names=[r or "__base__" for r in ROWS]).logits
        routing = install(model)
        assert routing is not None and routing_of(model) is routing
        with routing.rows(ROWS):
            routed = model(input_ids=ids, attention_mask=mask).logits
        # Outside `rows` the layers are PEFT's own again: the active adapter for every row.
        active = model(input_ids=ids, attention_mask=mask).logits
    assert routed == pytest.approx(expected, abs=1e-5)
    assert not torch.allclose(routed[1], routed[0])  # the rows really differ by adapter
    with torch.inference_mode():
        alone = model(input_ids=ids, attention_mask=mask, adapter_names=["left"] * len(ROWS)).logits
    assert active == pytest.approx(alone, abs=1e-5)


def test_an_adapter_peft_computes_otherwise_returns_the_model_to_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    model = peft_model(tiny_model_dir, tmp_path, dora=True)  # "right" is DoRA: a variant not routed
    model.delete_adapter("right")
    assert install(model) is not None  # "left" alone: routed
    assert any("forward" in m.__dict__ for m in model.modules())
    PeftModel.load_adapter(model, tmp_path / "right", adapter_name="right")  # attached while serving
    assert install(model) is None
    assert routing_of(model) is None
    assert all("forward" not in m.__dict__ for m in model.modules())  # PEFT's own forward everywhere again
