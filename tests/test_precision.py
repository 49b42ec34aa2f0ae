"""Precision by device capability: the seed's T4 (no bf16) trains in fp16 with loss scaling, modern GPUs in
bf16, full fine-tuning keeps fp32 master weights, the CPU fp32; and the trainer's settings follow the rule."""

from __future__ import annotations

import pytest

from smoltune.config import TrainConfig
from smoltune.train import trainer
from smoltune.train.precision import precision_for


@pytest.mark.parametrize(
    ("device", "mode", "bf16_ok", "expected"),
    [
        ("cuda", "lora", False, ("float16", False, True)),  # T4, V100: transformers refuses bf16 there
        ("cuda", "full", False, ("float32", False, True)),  # fp16 autocast over fp32 master weights
        ("cuda", "lora", True, ("bfloat16", True, False)),  # A100 / H100 / H200
        ("cuda", "full", True, ("float32", True, False)),  # never pure-bf16 weights
        ("cpu", "lora", True, ("float32", False, False)),
    ],
)
def test_precision_follows_the_device(device: str, mode: str, bf16_ok: bool, expected: tuple) -> None:
    chosen = precision_for(device, mode, bf16_ok)
    assert (chosen.load_dtype, chosen.bf16, chosen.fp16) == expected and chosen.reason


def test_the_trainer_settings_on_a_t4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer, "device_precision", lambda d, m: precision_for(d, m, bf16_supported=False))
    settings = trainer.sft_settings(TrainConfig(), "cuda", "/tmp/x")
    assert (settings["bf16"], settings["fp16"]) == (False, True)
