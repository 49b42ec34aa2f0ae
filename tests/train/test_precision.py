"""Precision: `train.precision` auto follows the card on CUDA (the seed's T4 has no bf16: fp16 with loss scaling)
and a measurement on a CPU (bf16 only where this machine's bf16 matmuls are clearly faster); LoRA keeps the frozen
base in the compute precision, full fine-tuning fp32 master weights; impossible requests fail up front; the
measurement runs once per machine; training in bf16 keeps adapters fp32 and tracks the fp32 losses."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smoltune import machine
from smoltune.config import TrainConfig
from smoltune.errors import ConfigError
from smoltune.machine import has_bf16
from smoltune.train import precision as precision_module
from smoltune.train import sft
from smoltune.train.precision import BF16_MARGIN, precision_for

AMX_LIKE = {"fp32": 320.0, "bf16": 2300.0}  # an Intel Xeon with AMX (docs/benchmarks.md)
AVX2_ONLY = {"fp32": 250.0, "bf16": 90.0}  # an AVX2-only AMD EPYC: bf16 emulated


T4, V100, A10G, L4, A100, H100 = (7, 5), (7, 0), (8, 6), (8, 9), (8, 0), (9, 0)  # real cards' capabilities


@pytest.mark.parametrize(
    ("device", "mode", "card", "requested", "gflops", "expected"),
    [
        ("cuda", "lora", T4, "auto", None, ("fp16", "float16", False, True)),  # the seed's card: no bf16 units
        ("cuda", "lora", V100, "auto", None, ("fp16", "float16", False, True)),
        ("cuda", "full", T4, "auto", None, ("fp16", "float32", False, True)),  # fp16 autocast, fp32 master
        ("cuda", "lora", A100, "auto", None, ("bf16", "bfloat16", True, False)),
        ("cuda", "lora", A10G, "auto", None, ("bf16", "bfloat16", True, False)),
        ("cuda", "lora", L4, "auto", None, ("bf16", "bfloat16", True, False)),
        ("cuda", "lora", H100, "auto", None, ("bf16", "bfloat16", True, False)),  # H100 / H200
        ("cuda", "full", H100, "auto", None, ("bf16", "float32", True, False)),  # never pure-bf16 weights
        ("cuda", "lora", H100, "fp16", None, ("fp16", "float16", False, True)),
        ("cpu", "lora", None, "auto", AMX_LIKE, ("bf16", "bfloat16", True, False)),
        ("cpu", "full", None, "auto", AMX_LIKE, ("bf16", "float32", True, False)),
        ("cpu", "lora", None, "auto", AVX2_ONLY, ("fp32", "float32", False, False)),
        ("cpu", "lora", None, "auto", {"fp32": 100.0, "bf16": 100.0 * BF16_MARGIN - 1}, ("fp32", "float32", 0, 0)),
        ("cpu", "lora", None, "auto", None, ("fp32", "float32", False, False)),  # not measured
        ("cpu", "lora", None, "bf16", AVX2_ONLY, ("bf16", "bfloat16", True, False)),  # forced, even if slower
        ("cpu", "lora", None, "fp32", AMX_LIKE, ("fp32", "float32", False, False)),
    ],
)
def test_precision_rule(device, mode, card, requested, gflops, expected) -> None:  # noqa: ANN001
    chosen = precision_for(device, mode, card, requested, gflops)
    assert (chosen.name, chosen.load_dtype, chosen.bf16, chosen.fp16) == expected
    assert chosen.reason and (requested == "auto") == chosen.reason.startswith("auto")


@pytest.mark.parametrize(
    ("card", "bf16"), [(T4, False), (V100, False), (A10G, True), (L4, True), (A100, True), (H100, True)]
)
def test_bf16_is_decided_by_compute_capability(card: tuple[int, int], bf16: bool) -> None:
    assert has_bf16(card) is bf16


def test_impossible_requests_fail_up_front() -> None:
    with pytest.raises(ConfigError, match=r"this GPU \(compute capability 7.5\) has no bf16 units"):
        precision_for("cuda", "lora", T4, "bf16")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        precision_for("cpu", "lora", None, "fp16")


def test_on_a_simulated_t4_auto_is_fp16_and_bf16_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What resolve_precision asks of the card: its capability, never torch's is_bf16_supported (True on a T4)."""
    import torch

    monkeypatch.setattr(precision_module, "cuda_capability", lambda: T4)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch says on a real T4
    assert precision_module.resolve_precision("cuda", "lora", "auto", tmp_path).name == "fp16"
    with pytest.raises(ConfigError, match="compute capability 7.5"):
        precision_module.resolve_precision("cuda", "lora", "bf16", tmp_path)
    monkeypatch.setattr(precision_module, "cuda_capability", lambda: H100)
    assert precision_module.resolve_precision("cuda", "lora", "auto", tmp_path).name == "bf16"


def test_the_trainer_settings_on_a_t4() -> None:
    t4 = precision_for("cuda", "lora", T4)
    settings = sft.sft_settings(TrainConfig(), "cuda", "/tmp/x", precision=t4)
    assert (settings["bf16"], settings["fp16"]) == (False, True)


def test_the_cpu_is_measured_once_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setenv("SMOLTUNE_HOME", str(tmp_path))
    monkeypatch.setattr(machine, "_busy_seconds", lambda: 100.0)  # an idle machine: nothing else ran
    monkeypatch.setattr(precision_module, "measure_gflops", lambda shapes: calls.append(shapes) or dict(AMX_LIKE))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 64, "intermediate_size": 128}')
    first = precision_module.resolve_precision("cpu", "lora", "auto", model)
    again = precision_module.resolve_precision("cpu", "lora", "auto", model)
    assert calls == [[(64, 64), (64, 128), (128, 64)]]  # the model's shapes, measured once
    assert first == again and first.name == "bf16" and first.gflops == AMX_LIKE
    assert precision_module.resolve_precision("cpu", "lora", "fp32", model).gflops == {}  # forced: no measuring
    monkeypatch.setattr(precision_module, "_machine_key", lambda shapes: "another machine")
    precision_module.resolve_precision("cpu", "lora", "auto", model)
    assert len(calls) == 2


def test_a_measurement_on_a_busy_machine_is_used_once_and_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list = []
    monkeypatch.setenv("SMOLTUNE_HOME", str(tmp_path))
    monkeypatch.setattr(precision_module, "measure_gflops", lambda shapes: calls.append(shapes) or dict(AMX_LIKE))
    busy = iter(range(0, 10_000, 50))  # each reading 50 CPU-seconds later: other processes kept the CPUs busy
    monkeypatch.setattr(machine, "_busy_seconds", lambda: float(next(busy)))
    model = tmp_path / "model"
    model.mkdir()
    first = precision_module.resolve_precision("cpu", "lora", "auto", model)
    precision_module.resolve_precision("cpu", "lora", "auto", model)
    assert first.gflops == AMX_LIKE and len(calls) == 2  # used, and measured again next time
    assert not (tmp_path / "precision.json").exists()
    assert "not cached" in capsys.readouterr().err
    # An entry cached by earlier code (plain rates, no proof the machine was idle) is measured again.
    monkeypatch.setattr(machine, "_busy_seconds", lambda: 100.0)
    key = precision_module._machine_key(precision_module.matmul_shapes(model))
    (tmp_path / "precision.json").write_text(json.dumps({key: {"fp32": 1.0, "bf16": 3.0}}))
    precision_module.resolve_precision("cpu", "lora", "auto", model)
    assert len(calls) == 3 and json.loads((tmp_path / "precision.json").read_text())[key]["rates"] == AMX_LIKE


def test_a_resumed_training_keeps_the_precision_it_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun in a training's work folder (resuming after a crash) trains in the precision the training started
    in, even where measuring again (on a busy machine: never cached) would pick another."""
    monkeypatch.setenv("SMOLTUNE_HOME", str(tmp_path / "home"))
    busy = iter(range(0, 10_000, 50))  # other processes kept the CPUs busy: each measurement is used once
    monkeypatch.setattr(machine, "_busy_seconds", lambda: float(next(busy)))
    rates = [AMX_LIKE]
    monkeypatch.setattr(precision_module, "measure_gflops", lambda shapes: dict(rates[-1]))
    work, model = tmp_path / "work", tmp_path / "model"
    first = precision_module.resolve_precision("cpu", "lora", "auto", model, work)
    assert first.name == "bf16" and (work / precision_module.STORED_FILE).is_file()
    rates.append(AVX2_ONLY)
    assert precision_module.resolve_precision("cpu", "lora", "auto", model).name == "fp32"  # measured anew
    capsys.readouterr()
    assert precision_module.resolve_precision("cpu", "lora", "auto", model, work) == first  # the rerun
    assert "the precision this training started in" in capsys.readouterr().err
    # Stored for another request, or unreadable: resolved again (and stored).
    assert precision_module.resolve_precision("cpu", "lora", "fp32", model, work).name == "fp32"
    (work / precision_module.STORED_FILE).write_text("{not json")
    assert precision_module.resolve_precision("cpu", "lora", "auto", model, work).name == "fp32"
    # Stored on another kind of CPU (a rerun that landed elsewhere): resolved again for this one.
    rates.append(AMX_LIKE)
    monkeypatch.setattr(machine, "cpu_kind", lambda: "x86_64 another CPU amx_bf16")
    assert precision_module.resolve_precision("cpu", "lora", "auto", model, work).name == "bf16"


def test_measured_once_refuses_bad_entries_and_never_fails_on_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machine, "_busy_seconds", lambda: 100.0)  # an idle machine
    cache, calls = tmp_path / "kept.json", []

    def measure() -> str:
        calls.append(1)
        return "sdpa"

    def valid(value: object) -> bool:
        return value in ("sdpa", "matmul")

    cache.write_text(json.dumps({"k": {"value": "a kernel since renamed"}, "j": "not an entry"}))
    assert machine.measured_once(cache, "k", measure, valid) == "sdpa" and len(calls) == 1  # refused: measured
    assert machine.measured_once(cache, "k", measure, valid) == "sdpa" and len(calls) == 1  # kept
    cache.write_text("{torn")
    assert machine.measured_once(cache, "k", measure, valid) == "sdpa" and len(calls) == 2
    # A cache that cannot be written costs a measurement next time, never the caller's run.
    blocked = tmp_path / "a file" / "kept.json"
    (tmp_path / "a file").write_text("")  # a file where the cache's folder belongs
    assert machine.measured_once(blocked, "k", measure, valid) == "sdpa" and len(calls) == 3


def test_other_load_sees_another_busy_process() -> None:
    spinner = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"]
    )
    try:
        time.sleep(0.5)  # the spinner is running
        with machine.other_load() as load:
            time.sleep(1.5)
    finally:
        spinner.wait()
    assert load.cores is not None and load.cores >= 0.5 and not load.idle


def test_measurement_reports_each_precision() -> None:
    rates = precision_module.measure_gflops([(32, 32)], ("fp32", "bf16"), tokens=16)
    assert set(rates) == {"fp32", "bf16"} and all(rate > 0 for rate in rates.values())


def test_bf16_training_keeps_adapters_fp32_and_tracks_fp32(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The fast path (packing, fused LoRA, labelled-only loss) under bf16 autocast, over a bf16 base: the
    adapter stays fp32 and the losses stay within bf16's tolerance of the fp32 run's."""
    import torch
    from safetensors.torch import load_file

    from smoltune.data.builtin import generate_rows
    from smoltune.data.prompts import to_prompt_completion
    from smoltune.files import write_jsonl
    from smoltune.train.runner import train_in_subprocess
    from smoltune.train.spec import TrainSpec

    rows = write_jsonl(tmp_path / "train.jsonl", [to_prompt_completion(r) for r in generate_rows(24, seed=2)])
    losses = {}
    for name in ("fp32", "bf16"):
        config = TrainConfig(max_steps=4, warmup_steps=0, batch_size=2, grad_accum=2, precision=name)
        spec = TrainSpec(str(tiny_model_dir), str(rows), str(tmp_path / name), config.model_dump())
        result = train_in_subprocess(spec)
        assert result.precision == name and result.settings["bf16"] is (name == "bf16")
        assert all(math.isfinite(x) for x in result.losses)
        assert result.settings["fast_path"]["fused_lora"] and result.settings["fast_path"]["labelled_logits_only"]
        saved = load_file(Path(result.output_dir) / "adapter_model.safetensors")
        assert {t.dtype for t in saved.values()} == {torch.float32}
        losses[name] = result.losses
    # bf16 keeps 8 bits of mantissa: activations round at ~0.4% each; the tiny model's losses are ~6.
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    assert losses["bf16"] != losses["fp32"]  # really trained in another precision


def test_qlora_and_gpu_kernels_are_refused_where_they_cannot_run(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4-bit needs bitsandbytes' CUDA kernels and an adapter, flex attention a GPU: a CPU run stops with the
    setting named (a config error, exit 2, from the training process), and full fine-tuning in 4-bit is refused
    before any run."""
    from smoltune.config import PipelineConfig, semantic_problems
    from smoltune.train.runner import train_in_subprocess
    from smoltune.train.spec import TrainSpec

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the training process sees no GPU, on any machine
    config = TrainConfig(max_steps=1, warmup_steps=0)
    spec = TrainSpec(str(tiny_model_dir), "unused.jsonl", str(tmp_path / "q"), config.model_dump(), load_in_4bit=True)
    with pytest.raises(ConfigError, match="load_in_4bit: 4-bit \\(QLoRA\\) training needs a CUDA GPU") as raised:
        train_in_subprocess(spec)
    assert raised.value.exit_code == 2
    forced = TrainConfig(max_steps=1, warmup_steps=0, speed={"segment_kernel": "flex"}).model_dump()
    with pytest.raises(ConfigError, match="segment_kernel=flex needs a CUDA GPU") as raised:  # the same for a kernel
        train_in_subprocess(TrainSpec(str(tiny_model_dir), "unused.jsonl", str(tmp_path / "f"), forced))
    assert raised.value.exit_code == 2
    full = PipelineConfig(model={"load_in_4bit": True}, train={"mode": "full"})
    assert any("cannot be fully fine-tuned" in p for p in semantic_problems(full))
    assert not any("load_in_4bit" in p for p in semantic_problems(PipelineConfig(model={"load_in_4bit": True})))
