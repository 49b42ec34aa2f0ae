"""Training on the tiny random llama, always in a subprocess (as the flow does): both backends, both modes,
figures recorded, outputs loadable, and resumption after a real SIGKILL."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from smoltune.config import DataConfig, SpeedConfig, TrainConfig
from smoltune.data.builtin import generate_rows
from smoltune.data.prompts import to_prompt_completion
from smoltune.data.stage import prepare_dataset
from smoltune.data.tokens import IGNORE_INDEX, tokenize_example
from smoltune.files import write_jsonl
from smoltune.records import TrainResult
from smoltune.train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint
from smoltune.train.distributed import launch_command, launch_env
from smoltune.train.runner import train_in_subprocess
from smoltune.train.segment_kernels import resolve_segment_kernel
from smoltune.train.spec import TrainSpec
from smoltune.train.worker import STEP_PREFIX

FAST = {"warmup_steps": 1, "batch_size": 2, "grad_accum": 2, "max_seq_length": 256}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("prepared")
    raw = write_jsonl(folder / "raw.jsonl", generate_rows(80, seed=2))
    return prepare_dataset(raw, DataConfig(num_samples=32, eval_samples=8, seed=0), folder)


def spec_for(model_dir: Path, prepared: dict, work_dir: Path, **train: object) -> TrainSpec:
    config = TrainConfig(**{**FAST, **train})
    return TrainSpec(str(model_dir), prepared.train_file, str(work_dir), config.model_dump(mode="json"))


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, prepared: dict, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    steps: list[dict] = []
    spec = spec_for(tiny_model_dir, prepared, tmp_path_factory.mktemp("hf"), max_steps=3, backend="hf")
    result = train_in_subprocess(spec, steps.append)
    assert [s["step"] for s in steps] == [1, 2, 3]  # progress relayed from the training process
    return result


def test_prompt_tokens_are_masked_and_eos_appended(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = to_prompt_completion({"instruction": "Add the two numbers.", "input": "1 and 2", "output": "3"})
    prompt_len = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    masked = tokenize_example(tokenizer, row["prompt"], row["completion"], 512, mask_prompt=True)
    assert masked["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert masked["labels"][prompt_len:] == masked["input_ids"][prompt_len:]
    assert masked["input_ids"][-1] == tokenizer.eos_token_id
    unmasked = tokenize_example(tokenizer, row["prompt"], row["completion"], 512, mask_prompt=False)
    assert unmasked["labels"] == unmasked["input_ids"]
    assert len(tokenize_example(tokenizer, row["prompt"], row["completion"], 10, True)["input_ids"]) == 10


def test_training_records_the_figures(trained: TrainResult) -> None:
    assert (trained.backend, trained.mode, trained.lora_rank) == ("hf", "lora", 16)  # hf, asked for by the spec
    assert trained.steps == 3 and len(trained.losses) == 3
    assert all(math.isfinite(loss) for loss in trained.losses)
    assert trained.tokens_seen > 0 and trained.tokens_per_second > 0
    # Peak memory: process RSS on the CPU (over 100 MB with torch loaded), CUDA's allocator peak on a GPU.
    assert trained.train_seconds > 0 and trained.peak_memory_mb > (100 if trained.device == "cpu" else 0)
    assert [s["step"] for s in trained.step_log] == [1, 2, 3]
    assert all(math.isfinite(s["grad_norm"]) and s["learning_rate"] >= 0 for s in trained.step_log)
    assert trained.step_log[-1]["tokens_seen"] == trained.tokens_seen
    # The precision follows the machine this runs on (smoltune.train.precision: measured on a CPU), whichever it is.
    assert trained.precision in (("fp32", "bf16") if trained.device == "cpu" else ("bf16", "fp16"))
    expected = (trained.precision == "bf16", trained.precision == "fp16")
    assert (trained.settings["bf16"], trained.settings["fp16"]) == expected
    assert trained.settings["precision"].startswith("auto") and trained.settings["gradient_checkpointing"] is False
    if trained.device == "cpu":  # the measurement behind the choice is recorded with it
        assert set(trained.settings["matmul_gflops"]) == {"fp32", "bf16"}
    # train.speed.fused_optimizer (the default) on the CPU; 8-bit AdamW on CUDA.
    assert trained.settings["optim"] == ("adamw_torch_fused" if trained.device == "cpu" else "adamw_8bit")


def test_auto_backend_follows_the_device() -> None:
    from smoltune.errors import ConfigError
    from smoltune.train.trainer import CPU_AUTO_REASON, resolve_backend

    assert resolve_backend("auto", "cpu") == ("hf", CPU_AUTO_REASON)  # measured faster by `make bench`
    assert resolve_backend("auto", "cuda") == ("unsloth", "auto on CUDA: Unsloth's kernels")
    assert resolve_backend("unsloth", "cpu") == ("unsloth", "set by train.backend")
    assert resolve_backend("auto", "cuda", processes=2)[0] == "hf"  # Unsloth trains in one process
    with pytest.raises(ConfigError, match="one process"):
        resolve_backend("unsloth", "cuda", processes=2)


def test_fp32_on_a_gpu_is_the_hf_backends() -> None:
    """Unsloth turns bf16 autocast on when neither bf16 nor fp16 is set: an fp32 run recorded as fp32 must not
    train in bf16."""
    from smoltune.errors import ConfigError
    from smoltune.train.trainer import resolve_backend

    assert resolve_backend("auto", "cuda", precision="fp32")[0] == "hf"
    assert resolve_backend("auto", "cuda", precision="fp16")[0] == "unsloth"
    assert resolve_backend("unsloth", "cpu", precision="fp32")[0] == "unsloth"  # on a CPU it trains as told
    with pytest.raises(ConfigError, match="Unsloth trains in 16 bits there"):
        resolve_backend("unsloth", "cuda", precision="fp32")


def test_trainable_parameters_match_the_lora_formula(trained: TrainResult) -> None:
    # hidden 64, intermediate 128, 4 heads x 16 = 64 for q/o, 2 kv heads x 16 = 32 for k/v; r = 16
    r, h, i, kv = 16, 64, 128, 32
    per_layer = r * ((h + h) + (h + kv) * 2 + (h + h) + (h + i) * 2 + (i + h))
    assert trained.trainable_params == 2 * per_layer
    assert 0 < trained.trainable_percent < 100


def lora_b_weights(model_dir: Path, adapter_dir: str) -> list:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir)
    return [p for name, p in model.named_parameters() if "lora_B" in name]


def test_adapter_is_safetensors_and_loads_with_peft(trained: TrainResult, tiny_model_dir: Path) -> None:
    files = {p.name for p in Path(trained.output_dir).iterdir()}
    assert files == {"adapter_model.safetensors", "adapter_config.json", "README.md"}
    lora_b = lora_b_weights(tiny_model_dir, trained.output_dir)
    assert len(lora_b) == 2 * 7
    # LoRA B starts at zero: any non-zero value means training moved the adapter.
    assert any(p.abs().sum().item() > 0 for p in lora_b)
    assert trained.saved_mb > 0


def test_a_finished_folder_is_reused(trained: TrainResult, tiny_model_dir: Path, prepared: dict) -> None:
    spec = spec_for(tiny_model_dir, prepared, Path(trained.output_dir).parent, max_steps=3, backend="hf")
    assert train_in_subprocess(spec) == trained


def test_the_fast_path_trains_the_same_losses_on_the_same_tokens(
    trained: TrainResult, tiny_model_dir: Path, prepared: dict, tmp_path: Path
) -> None:
    off = {key: False for key in SpeedConfig.switches()}
    # The default; packed rows attend by the kernel this device runs (rows on a CPU), its reason recorded.
    kernel, reason = resolve_segment_kernel("auto", trained.device, trained.precision)
    assert trained.settings["fast_path"] == {**{key: True for key in off}, "segment_kernel": kernel}
    assert trained.settings["segment_kernel"] == reason
    assert trained.settings["per_device_train_batch_size"] == 4  # batch 2 x accumulation 2 in one packed forward
    plain = train_in_subprocess(spec_for(tiny_model_dir, prepared, tmp_path, max_steps=3, backend="hf", speed=off))
    assert plain.settings["fast_path"] == {**{key: False for key in off}, "segment_kernel": "rows"}
    assert plain.settings["segment_kernel"] == "not packed"
    assert plain.tokens_seen == trained.tokens_seen  # the same rows, every token counted once
    assert plain.losses == pytest.approx(trained.losses, abs=1e-4)
    # Checkpoints every save_steps only: the Trainer's extra one after the last step is skipped.
    assert not list((tmp_path / "checkpoints").glob("checkpoint-*"))


def test_unsloth_backend_gives_the_same_artifacts_and_metrics(
    trained: TrainResult, tiny_model_dir: Path, prepared: dict, tmp_path: Path
) -> None:
    result = train_in_subprocess(spec_for(tiny_model_dir, prepared, tmp_path, max_steps=2, backend="unsloth"))
    assert result.backend == "unsloth" and result.steps == 2 and len(result.losses) == 2
    assert all(math.isfinite(x) for x in result.losses) and result.tokens_per_second > 0
    assert set(result.to_dict()) == set(trained.to_dict())
    assert {p.name for p in Path(result.output_dir).iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    assert result.trainable_params == trained.trainable_params
    assert any(p.abs().sum().item() > 0 for p in lora_b_weights(tiny_model_dir, result.output_dir))


def test_full_fine_tuning_trains_every_weight(tiny_model_dir: Path, prepared: dict, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    result = train_in_subprocess(spec_for(tiny_model_dir, prepared, tmp_path, max_steps=2, mode="full", backend="hf"))
    assert result.mode == "full" and result.lora_rank is None
    assert result.trainable_params == result.total_params
    assert (Path(result.output_dir) / "model.safetensors").is_file()
    tuned = AutoModelForCausalLM.from_pretrained(result.output_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = [(a - b).abs().max().item() for a, b in zip(tuned.parameters(), base.parameters(), strict=True)]
    assert max(moved) > 0


def test_partial_checkpoints_are_never_chosen(tmp_path: Path) -> None:
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE_MARKER).write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert latest_complete_checkpoint(tmp_path / "absent") is None


def kill_after_step(spec: TrainSpec, step: int) -> None:
    """Start the training as the runner would (one worker, or torchrun and its workers) and SIGKILL all of
    its processes (a lost machine) as soon as it reports `step`."""
    work = Path(spec.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps(spec.__dict__))
    train = TrainConfig.model_validate(spec.config)
    proc = subprocess.Popen(
        launch_command(spec_file, train),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=launch_env(train),
        start_new_session=True,
    )
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith(STEP_PREFIX) and json.loads(line[len(STEP_PREFIX) :])["step"] >= step:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (work / "result.json").exists()


def test_resume_after_sigkill_matches_an_uninterrupted_run(
    tiny_model_dir: Path, prepared: dict, tmp_path: Path
) -> None:
    settings = {"max_steps": 6, "save_steps": 2, "save_total_limit": 5, "backend": "hf"}
    straight = train_in_subprocess(spec_for(tiny_model_dir, prepared, tmp_path / "straight", **settings))

    interrupted = spec_for(tiny_model_dir, prepared, tmp_path / "interrupted", **settings)
    kill_after_step(interrupted, 3)
    checkpoints = tmp_path / "interrupted" / "checkpoints"
    last = latest_complete_checkpoint(checkpoints)
    assert last is not None and not (tmp_path / "interrupted" / "result.json").exists()
    # A checkpoint whose writing never finished must be ignored: fake one beyond the last complete one.
    partial = checkpoints / "checkpoint-5"
    shutil.copytree(last, partial)
    (partial / COMPLETE_MARKER).unlink()

    resumed = train_in_subprocess(interrupted)
    assert resumed.resumed_from_step == int(last.name.split("-")[1]) >= 2
    assert resumed.steps == 6 and len(resumed.losses) == 6
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-4)


def test_a_prestarted_worker_trains_as_a_fresh_one(
    trained: TrainResult, tiny_model_dir: Path, prepared: dict, tmp_path: Path
) -> None:
    """The flow starts the worker before the data stages (smoltune.train.prestart); the training it then runs
    is the same one."""
    from smoltune.train import prestart
    from smoltune.train.distributed import WORKER_MODULE
    from smoltune.train.runner import prestarted_training

    spec = spec_for(tiny_model_dir, prepared, tmp_path, max_steps=3, backend="hf")
    with prestarted_training(TrainConfig.model_validate(spec.config)):
        waiting = prestart._waiting[WORKER_MODULE].popen
        result = train_in_subprocess(spec)
        assert WORKER_MODULE not in prestart._waiting  # taken by this training
    assert waiting.returncode == 0  # it trained (a discarded one is killed: -9)
    assert result.losses == pytest.approx(trained.losses, abs=1e-4)
