"""DPO training on the tiny llama, in its process as the flow runs it: the reference is exactly the SFT model
(step-1 sigmoid loss log 2), the stored reference log-probs give the losses of TRL's per-step reference
forward, the adapter is one plain PEFT adapter over the base, and a SIGKILLed training resumes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from smoltune.config import PreferenceConfig
from smoltune.data.prompts import format_prompt
from smoltune.files import write_jsonl
from smoltune.preference.builtin import checkable_questions, plausible_wrong
from smoltune.preference.runner import run_preference
from smoltune.preference.spec import PreferenceSpec
from smoltune.train.worker import STEP_PREFIX

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SFT adapter whose B matrices are not zero (so the SFT model differs from the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], task_type="CAUSAL_LM"),
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    target = tmp_path_factory.mktemp("sft") / "adapter"
    model.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    questions = checkable_questions(16, seed=2)
    pairs = [{"prompt": format_prompt(q), "chosen": q["output"], "rejected": plausible_wrong(q)} for q in questions]
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "train.jsonl", pairs)


def spec(phase: str, model: Path, sft: Path, train_file: Path, work: Path, **settings: object) -> PreferenceSpec:
    pref = PreferenceConfig(max_steps=3, batch_size=2, grad_accum=2, learning_rate=1e-3, save_steps=1, **settings)
    return PreferenceSpec(
        phase=phase,  # type: ignore[arg-type]
        model_path=str(model),
        sft_output=str(sft),
        train_file=str(train_file),
        work_dir=str(work),
        settings=pref.model_dump(mode="json"),
        precision="fp32",
    )


def test_reference_is_the_sft_model_and_each_fast_path_switch_changes_nothing(
    tiny_model_dir: Path, sft_adapter: Path, pairs_file: Path, tmp_path: Path
) -> None:
    """TRL's own layout (a reference forward every step, two padded rows per pair) against the stored reference
    log-probs, then each switch added in turn (the shared-prompt rows, a step's forwards folded into one, fused
    LoRA): the same per-step losses."""
    scored = run_preference(spec("reference", tiny_model_dir, sft_adapter, pairs_file, tmp_path / "ref"))
    rows = [json.loads(line) for line in Path(scored).read_text().splitlines()]
    assert len(rows) == 16 and all(r["ref_chosen_logps"] < 0 and r["ref_rejected_logps"] < 0 for r in rows)

    def losses(name: str, train_file: Path, **settings: object) -> list[float]:
        result = run_preference(spec("train", tiny_model_dir, sft_adapter, train_file, tmp_path / name, **settings))
        return result.losses

    off = {"share_prompt": False, "fold_accumulation": False, "fused_lora": False}
    trl_layout = losses("trl", pairs_file, **{**off, "precompute_reference": False})
    stored = losses("stored", Path(scored), **off)
    shared = losses("shared", Path(scored), **{**off, "share_prompt": True})
    folded = losses("folded", Path(scored), **{**off, "share_prompt": True, "fold_accumulation": True})
    every = losses("every", Path(scored))  # the defaults: every switch on
    merged = json.loads((tmp_path / "every" / "result.json").read_text())["settings"]
    assert (merged["per_device_train_batch_size"], merged["gradient_accumulation_steps"]) == (4, 1)  # it folded
    # Policy = reference at step 1: sigmoid DPO loss is -log sigmoid(0) = log 2.
    runs = {"trl": trl_layout, "stored": stored, "shared": shared, "folded": folded, "every": every}
    for run in runs.values():
        assert math.isclose(run[0], math.log(2), abs_tol=1e-5), run
    assert trl_layout[-1] < math.log(2)  # it learnt
    for name, run in runs.items():
        assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(trl_layout, run, strict=True)), (name, runs)


def test_the_adapter_is_one_plain_peft_adapter_over_the_base(
    tiny_model_dir: Path, sft_adapter: Path, pairs_file: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run_preference(
        spec("train", tiny_model_dir, sft_adapter, pairs_file, tmp_path / "t", precompute_reference=False)
    )
    adapter = Path(result.output_dir)
    files = {p.name for p in adapter.iterdir()} - {"README.md"}  # PEFT's model card
    assert files == {"adapter_config.json", "adapter_model.safetensors"}  # one adapter: TRL's "ref" copy left out
    assert result.lora_rank == 4 and result.steps == 3 and result.backend == "hf"
    dpo = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), sft_adapter)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert not torch.allclose(dpo(ids).logits, sft(ids).logits)  # trained further, from the SFT adapter


def test_a_killed_training_resumes_from_its_checkpoint(
    tiny_model_dir: Path, sft_adapter: Path, pairs_file: Path, tmp_path: Path
) -> None:
    work = tmp_path / "killed"
    job = spec("train", tiny_model_dir, sft_adapter, pairs_file, work, precompute_reference=False)
    work.mkdir()
    (work / "spec.json").write_text(json.dumps(asdict(job)))
    command = [sys.executable, "-m", "smoltune.preference.worker", str(work / "spec.json")]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith(STEP_PREFIX) and json.loads(line[len(STEP_PREFIX) :])["step"] >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (work / "result.json").exists()
    resumed = run_preference(job)
    assert resumed.resumed_from_step >= 1 and resumed.steps == 3 and len(resumed.losses) == 3
    straight = run_preference(replace(job, work_dir=str(tmp_path / "straight")))
    # The policy resumed, not the SFT adapter (TRL's reference copy is never what a checkpoint resumes).
    for a, b in zip(resumed.losses, straight.losses, strict=True):
        assert math.isclose(a, b, abs_tol=1e-4), (resumed.losses, straight.losses)
