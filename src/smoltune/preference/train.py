"""DPO after SFT with TRL's DPOTrainer: the policy starts as the SFT model and the reference *is* the SFT model.

    python -m smoltune.preference.worker WORK_DIR/spec.json     # what the preference stages run, in a process

How the adapters relate: after LoRA SFT the DPO stage trains **the SFT adapter itself, further** (loaded
trainable; TRL keeps a frozen copy as the reference). The DPO adapter is then one ordinary adapter over the
hub base, of the SFT adapter's rank: `PeftModel.from_pretrained(base, dpo_adapter)`, `smoltune serve` and
`smoltune chat` load it as they load any adapter, and at step 0 the policy equals the reference exactly
(sigmoid loss log 2). Merging SFT into the base and adding a new adapter would give the same reference but an
adapter that needs the merged model beside it to be used. Preference tuning therefore starts from LoRA SFT
(train.mode=lora; the config check says so).

Fast path on the CPU (TRL 1.15 already runs chosen and rejected in one forward and projects only answer
positions through the LM head): with `preference.precompute_reference` the reference log-probs are computed
once, by TRL's own code, in a stage of their own (phase 'reference', cached), and training reads them from
the pairs file instead of a second forward every step (`StoredReference`). With `preference.share_prompt` each
pair's two answers go through the decoder in one row holding their shared prompt once
(smoltune.preference.shared_prompt). With `preference.fold_accumulation` a step's forward passes are merged while
they fit `preference.max_forward_tokens` (smoltune.preference.folding); with `preference.fused_lora` each LoRA
projection is one addmm (smoltune.train.fused_lora).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smoltune.config import PreferenceConfig
from smoltune.errors import TrainingError
from smoltune.files import atomic_write_json, read_jsonl, write_jsonl
from smoltune.model import load_model_and_tokenizer, pick_device
from smoltune.preference.cpu_logprobs import install as install_cpu_logprobs
from smoltune.preference.folding import folded_micro_batches
from smoltune.preference.shared_prompt import install as install_shared_prompt
from smoltune.preference.spec import REFERENCE_FILE, PreferenceSpec
from smoltune.records import TrainResult
from smoltune.train.fused_lora import fuse_lora_linears
from smoltune.train.precision import Precision, precision_for
from smoltune.train.spec import RESULT_FILE, finished_result

REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
DPO_BACKEND_REASON = {
    False: "TRL DPOTrainer: Unsloth's DPO path (PatchDPOTrainer) needs a GPU",
    True: "TRL DPOTrainer: Unsloth's PatchDPOTrainer is not wired in yet (never run on a GPU here)",
}


def dpo_settings(
    pref: PreferenceConfig, device: str, output_dir: str, precision: Precision, fold: int = 1
) -> dict[str, Any]:
    """DPOConfig arguments. TRL's defaults are for a GPU: gradient checkpointing (off: a 135M model does not need
    it) and bf16 (here the SFT training's precision, measured on a CPU). `fold` forward passes of a step run as
    one (smoltune.preference.folding)."""
    on_cuda = device == "cuda"
    return {
        "output_dir": output_dir,
        "max_steps": pref.max_steps,
        "per_device_train_batch_size": pref.batch_size * fold,
        "gradient_accumulation_steps": pref.grad_accum // fold,
        "learning_rate": pref.learning_rate,
        "warmup_steps": pref.warmup_steps,
        "lr_scheduler_type": "linear",
        "seed": pref.seed,
        "data_seed": pref.seed,
        "max_length": pref.max_length,
        "beta": pref.beta,
        "loss_type": [pref.loss_type, "sft"] if pref.sft_loss_weight else [pref.loss_type],
        "loss_weights": [1.0, pref.sft_loss_weight] if pref.sft_loss_weight else None,
        "precompute_ref_log_probs": pref.precompute_reference,
        "precompute_ref_batch_size": 8,
        "optim": "adamw_8bit" if on_cuda else "adamw_torch",
        "bf16": precision.bf16,
        "fp16": precision.fp16,
        "use_cpu": not on_cuda,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "logging_nan_inf_filter": False,  # a NaN step loss must show (FiniteGuard stops the run)
        "save_strategy": "steps",
        "save_steps": pref.save_steps,
        "save_total_limit": 2,
        "report_to": "none",
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


def load_libraries() -> None:
    """What both phases import, done by a prestarted worker while it waits for its spec (smoltune.train.prestart)."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    from trl import DPOConfig, DPOTrainer  # noqa: F401


def stored_reference_class() -> type:
    """DPOTrainer that reads the reference log-probs the pairs file already holds (the cached 'reference'
    stage's output) instead of computing them again when it is built."""
    from trl import DPOTrainer

    class StoredReference(DPOTrainer):
        # TRL's hook for the precomputation; its result is what the pairs already carry.
        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            if set(REFERENCE_COLUMNS) <= set(dataset.column_names):
                return dataset
            return super()._precompute_ref_logps(dataset, name, batch_size)

    return StoredReference


def drop_reference_copy_class() -> type:
    from transformers import TrainerCallback

    class DropReferenceCopy(TrainerCallback):
        """A checkpoint keeps only the policy adapter. TRL's frozen "ref" copy (the SFT adapter, rebuilt from it
        on every start) would otherwise sit in `checkpoint-N/ref/`, and transformers, finding an adapter
        sub-folder, resumes that one alone and never the policy: a resumed run would restart from SFT.
        Runs before MarkCompleteCheckpoints, so a checkpoint is marked complete only without it."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import shutil

            shutil.rmtree(Path(args.output_dir) / f"checkpoint-{state.global_step}" / "ref", ignore_errors=True)

    return DropReferenceCopy


def spec_precision(spec: PreferenceSpec, device: str) -> Precision:
    from smoltune.machine import cuda_capability

    capability = cuda_capability() if device == "cuda" else None
    chosen = precision_for(device, "lora", capability, spec.precision)
    return replace(chosen, reason=f"the SFT training's precision ({spec.precision}): the reference ran in it")


def load_policy(spec: PreferenceSpec, device: str, precision: Precision) -> tuple[Any, Any]:
    """(model, tokenizer): the SFT adapter loaded trainable over the base (TRL keeps a frozen copy of it as the
    reference)."""
    from peft import PeftModel

    base, tokenizer = load_model_and_tokenizer(
        spec.model_path, device, spec.trust_remote_code, None, precision.load_dtype
    )
    # The adapter in fp32 over a 16-bit base (PEFT's default upcast), as SFT trained it (smoltune.train.precision).
    model = PeftModel.from_pretrained(base, spec.sft_output, is_trainable=True)
    return model, tokenizer


def build_trainer(spec: PreferenceSpec, callbacks: list[Any] | None = None) -> tuple[Any, Precision, str]:
    """(trainer, precision, device) over the spec's pairs."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig

    pref = PreferenceConfig.model_validate(spec.settings)
    device = pick_device()
    precision = spec_precision(spec, device)
    torch.manual_seed(pref.seed)
    model, tokenizer = load_policy(spec, device, precision)
    install_cpu_logprobs(device)
    if pref.share_prompt:  # before the trainer exists: TRL's reference precomputation runs in its constructor
        causal = model.get_base_model()
        install_shared_prompt(getattr(causal, causal.base_model_prefix))
    pairs = read_jsonl(spec.train_file)
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's, for data-parallel training
    router_loss = bool(getattr(model.config, "output_router_logits", False))
    fold = folded_micro_batches(pref, pairs, tokenizer, processes, router_loss)
    args = DPOConfig(**dpo_settings(pref, device, str(Path(spec.work_dir) / "checkpoints"), precision, fold))
    trainer = stored_reference_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        callbacks=callbacks or [],
    )
    if pref.fused_lora:  # after TRL's reference pass (in the constructor): the training steps are what it speeds
        fuse_lora_linears(trainer.model)
    return trainer, precision, device


def score_reference(spec: PreferenceSpec) -> Path:
    """The training pairs with the reference's log-probs added (REFERENCE_FILE in the work folder), computed by
    DPOTrainer's own precomputation, before any step, so they are the SFT model's."""
    target = Path(spec.work_dir) / REFERENCE_FILE
    if target.is_file():
        return target
    spec = replace(spec, settings={**spec.settings, "precompute_reference": True})
    trainer, _, _ = build_trainer(spec)
    columns = {name: trainer.train_dataset[name] for name in REFERENCE_COLUMNS}
    pairs = read_jsonl(spec.train_file)
    if len(columns[REFERENCE_COLUMNS[0]]) != len(pairs):  # TRL drops pairs whose prompt fills max_length
        raise TrainingError(
            f"{len(pairs) - len(columns[REFERENCE_COLUMNS[0]])} pairs have a prompt of preference.max_length tokens "
            "or more; raise preference.max_length (the pair gate should have stopped them)"
        )
    return write_jsonl(
        target, [{**pair, **{k: float(v[i]) for k, v in columns.items()}} for i, pair in enumerate(pairs)]
    )


def train_preference(spec: PreferenceSpec, on_step: Any = None) -> TrainResult:
    """Train per `spec`, resuming from the last complete checkpoint; a finished folder returns its result."""
    from smoltune.train.checkpoints import (
        MarkCompleteCheckpoints,
        NoFinalCheckpoint,
        StopOnSignal,
        latest_complete_checkpoint,
        logged_steps,
    )
    from smoltune.train.instrumentation import PeakMemory, StepLog
    from smoltune.train.trainer import count_parameters, save_trained

    work_dir = Path(spec.work_dir)
    if (finished := finished_result(work_dir)) is not None:
        return finished
    resume = latest_complete_checkpoint(work_dir / "checkpoints")
    earlier = logged_steps(resume) if resume else []
    step_log = StepLog(on_step, loss_scaling=spec.precision == "fp16")
    stopper = StopOnSignal()
    callbacks = [step_log, drop_reference_copy_class()(), MarkCompleteCheckpoints(), NoFinalCheckpoint(), stopper]
    trainer, precision, device = build_trainer(spec, callbacks)
    trainable, total = count_parameters(trainer.model)
    with PeakMemory(cuda=device == "cuda") as peak:
        started_at, started = datetime.now(UTC).isoformat(timespec="milliseconds"), time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        seconds = time.perf_counter() - started
    stopper.raise_if_stopped(int(trainer.state.global_step), int(trainer.state.max_steps))
    if "ref" in trainer.model.peft_config:  # TRL's frozen copy of the SFT adapter: the reference, not the result
        trainer.model.delete_adapter("ref")
    output_dir = save_trained(trainer, trainer.processing_class, "lora", work_dir, spec.base_model_id)
    history = earlier + step_log.steps
    tokens = int(trainer.state.num_input_tokens_seen)
    tokens_this_run = tokens - (earlier[-1]["tokens_seen"] if earlier else 0)
    pref = PreferenceConfig.model_validate(spec.settings)
    fold = pref.grad_accum // trainer.args.gradient_accumulation_steps
    settings = dpo_settings(pref, device, "", precision, fold)
    result = TrainResult(
        backend="hf",
        backend_reason=DPO_BACKEND_REASON[device == "cuda"],
        mode="lora",
        lora_rank=_adapter_rank(output_dir),
        device=device,
        trainable_params=trainable,
        total_params=total,
        steps=int(trainer.state.global_step),
        train_seconds=round(seconds, 3),
        tokens_seen=tokens,
        tokens_per_second=round(tokens_this_run / seconds, 2) if seconds > 0 else 0.0,
        peak_memory_mb=round(peak.megabytes, 1),
        losses=[s["loss"] for s in history],
        step_log=history,
        output_dir=str(output_dir),
        saved_mb=round(sum(f.stat().st_size for f in output_dir.rglob("*") if f.is_file()) / 2**20, 3),
        resumed_from_step=int(earlier[-1]["step"]) if earlier else 0,
        settings={**{k: v for k, v in settings.items() if k != "output_dir"}, "precision": precision.reason},
        precision=precision.name,
        started_at=started_at,
    )
    atomic_write_json(work_dir / RESULT_FILE, result.to_dict())
    return result


def _adapter_rank(adapter_dir: Path) -> int | None:
    import json

    return json.loads((adapter_dir / "adapter_config.json").read_text()).get("r")
