"""Training, measured and resumable: LoRA or full fine-tuning, with the hf or the unsloth backend.

    python -m smoltune.train.worker WORK_DIR/spec.json     # what the train task runs, in its own process

`train(spec)` trains into `spec.work_dir`: checkpoints under `checkpoints/` (each marked complete once
written), the result under `adapter/` (LoRA) or `model/` (full), and the figures in `result.json`. Run it
again on the same folder and it resumes from the last complete checkpoint, or returns the finished result.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smoltune.config import UNSLOTH_ONE_PROCESS, TrainConfig
from smoltune.data.tokens import tokenize_rows
from smoltune.errors import ConfigError
from smoltune.files import atomic_dir, atomic_write_json, dir_size_mb, read_jsonl
from smoltune.model import load_model_and_tokenizer, pick_device
from smoltune.train.distributed import Rank
from smoltune.train.precision import DTYPES, FP32, Precision, resolve_precision
from smoltune.train.spec import RESULT_FILE, TrainResult, TrainSpec, finished_result

# `make bench` (README, "Performance"): on the CPU the hf backend with its fast path (smoltune.train.packing) trains
# 1.9-2.8x as fast as Unsloth's own CPU path with the same per-step losses (2026-11-29, AMD EPYC with
# AVX512-BF16), and Unsloth's import patches trl process-wide; so auto picks hf on the CPU.
CPU_AUTO_BACKEND = "hf"
CPU_AUTO_REASON = "auto on CPU: hf with its fast path, faster than Unsloth's CPU path in `make bench` (README)"


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, counting tied weights once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def resolve_backend(requested: str, device: str, processes: int = 1) -> tuple[str, str]:
    """(backend, reason) for `train.backend`; data-parallel training (torchrun) runs the hf backend."""
    if processes > 1:
        if requested == "unsloth":
            raise ConfigError([UNSLOTH_ONE_PROCESS])
        return "hf", f"{processes} data-parallel processes: hf (torchrun + DistributedDataParallel)"
    if requested != "auto":
        return requested, "set by train.backend"
    if device == "cuda":
        return "unsloth", "auto on CUDA: Unsloth's kernels"
    return CPU_AUTO_BACKEND, CPU_AUTO_REASON


@dataclass(frozen=True)
class FastPath:
    """Which switches of `train.speed` are in effect: they apply to the hf backend only (Unsloth brings its
    own kernels and collator)."""

    padding_free: bool = False
    pack_accumulation: bool = False
    labelled_logits_only: bool = False
    fused_lora: bool = False
    fused_optimizer: bool = False
    segment_kernel: str = "rows"  # how packed rows attend (smoltune.train.segment_kernels), set by with_kernel

    @classmethod
    def for_run(cls, config: TrainConfig, backend: str) -> FastPath:
        if backend != "hf":
            return cls()
        speed = config.speed
        return cls(
            padding_free=speed.padding_free,
            pack_accumulation=speed.padding_free and speed.pack_accumulation,
            labelled_logits_only=speed.labelled_logits_only,
            fused_lora=speed.fused_lora and config.mode == "lora",
            fused_optimizer=speed.fused_optimizer,
        )


def with_kernel(fast: FastPath, config: TrainConfig, device: str, precision: Precision) -> tuple[FastPath, str]:
    """`fast` with the packed rows' attention kernel this device and precision run (and the reason for it)."""
    if not fast.padding_free:
        return fast, "not packed"
    from smoltune.train.segment_kernels import resolve_segment_kernel

    kernel, reason = resolve_segment_kernel(config.speed.segment_kernel, device, precision.name)
    return replace(fast, segment_kernel=kernel), reason


def fit_packing(fast: FastPath, lengths: list[int], rows_per_step: int, max_tokens: int) -> FastPath:
    """`fast` without pack_accumulation when the `rows_per_step` longest rows exceed `max_tokens`: one packed
    forward of a whole step would then hold too many activations; the step's micro-batches are packed instead."""
    longest_step = sum(sorted(lengths, reverse=True)[:rows_per_step])
    return replace(fast, pack_accumulation=False) if longest_step > max_tokens else fast


def peft_lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        use_rslora=config.lora.use_rslora,
        use_dora=config.lora.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def quantization_4bit(spec: TrainSpec, precision: Precision) -> Any:
    """bitsandbytes' 4-bit NF4 config (double quantisation, compute in the training precision) for QLoRA, as
    Unsloth's notebooks load a base on a T4; None without `model.load_in_4bit`."""
    if not spec.load_in_4bit:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, DTYPES[precision.name]),
    )


def check_quantisation(spec: TrainSpec, mode: str, device: str) -> None:
    """QLoRA needs bitsandbytes' CUDA kernels and an adapter to train: say so before loading anything."""
    if spec.load_in_4bit and device != "cuda":
        raise ConfigError(
            [
                f"model.load_in_4bit: 4-bit (QLoRA) training needs a CUDA GPU; this machine trains on "
                f"{device}. Set model.load_in_4bit=false here"
            ]
        )
    if spec.load_in_4bit and mode != "lora":
        raise ConfigError(["model.load_in_4bit: 4-bit weights cannot be fully fine-tuned; use train.mode=lora"])


def load_for_training(
    backend: str, spec: TrainSpec, config: TrainConfig, device: str, fast: FastPath, precision: Precision
) -> tuple[Any, Any]:
    """Model (with LoRA layers in lora mode) and tokenizer for `backend`, weights in `precision.load_dtype`
    (PEFT keeps the adapter weights fp32 over a 16-bit base)."""
    if backend == "unsloth":
        from smoltune.train.backend_unsloth import load_unsloth  # imports unsloth, which patches trl process-wide

        return load_unsloth(spec.model_path, config, device, precision, spec.load_in_4bit)
    attention = None
    if fast.padding_free:
        from smoltune.train.packing import register_segment_attention

        attention = register_segment_attention(fast.segment_kernel)
    model, tokenizer = load_model_and_tokenizer(
        spec.model_path,
        device,
        spec.trust_remote_code,
        attention,
        precision.load_dtype,
        quantization_4bit(spec, precision),
    )
    if config.mode == "lora":
        from peft import get_peft_model, prepare_model_for_kbit_training

        if spec.load_in_4bit:  # norms and head in fp32 for stable 4-bit training; no checkpointing (see sft_settings)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, peft_lora_config(config))
        if fast.fused_lora:
            from smoltune.train.fused_lora import fuse_lora_linears

            fuse_lora_linears(model)
    return model, tokenizer


def sft_settings(
    config: TrainConfig,
    device: str,
    output_dir: str,
    fast: FastPath | None = None,
    precision: Precision | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """SFTConfig arguments for the seed job. TRL's gradient checkpointing costs time a 135M model does not need
    and is off; bf16 / fp16 follow `precision` (smoltune.train.precision, by measurement on a CPU); the optimizer
    is adamw_8bit on CUDA and on the CPU torch's AdamW, fused when `train.speed.fused_optimizer` is on.

    With `pack_accumulation` the batch_size x grad_accum rows of an optimizer step go through one packed forward:
    the sampler hands out the same rows per step and the loss is the mean over the same labelled tokens.

    With N data-parallel `processes` each rank takes grad_accum / N micro-batches per step, each its slice of
    N micro-batches' rows drawn in one process's order (smoltune.train.distributed.all_ranks_loader), so every
    step covers the same rows as one process would, the short step at an epoch's end included."""
    on_cuda = device == "cuda"
    fast = fast or FastPath()
    precision = precision or FP32
    batch, accum = config.batch_size, config.grad_accum // processes
    if fast.pack_accumulation:
        batch, accum = batch * accum, 1
    return {
        "output_dir": output_dir,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": accum,
        "learning_rate": config.learning_rate,
        "warmup_steps": config.warmup_steps,
        "lr_scheduler_type": config.lr_scheduler,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "data_seed": config.seed,
        "max_length": config.max_seq_length,
        "optim": "adamw_8bit" if on_cuda else ("adamw_torch_fused" if fast.fused_optimizer else "adamw_torch"),
        "bf16": precision.bf16,
        "fp16": precision.fp16,
        "use_cpu": not on_cuda,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        # transformers logs a NaN/inf step loss as the running mean by default, hiding a divergence.
        "logging_nan_inf_filter": False,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "report_to": "none",
        # A packed batch has no padding (and no attention mask to count by): every token is real.
        "include_num_input_tokens_seen": "all" if fast.padding_free else "non_padding",
        "dataloader_num_workers": 0,
        # Every trainable weight takes part in every step: no search for unused ones (a pass over the graph).
        "ddp_find_unused_parameters": False,
        "ddp_backend": ("nccl" if on_cuda else "gloo") if processes > 1 else None,
        "disable_tqdm": False,  # a progress bar in the terminal; the Prefect task logs every few steps
    }


def sft_trainer_class(
    device: str, fast: FastPath | None = None, precision: Precision | None = None, rank: Rank | None = None
) -> type:
    """TRL's SFTTrainer, or (on the CPU, with the fast path, or data-parallel) a subclass that computes the loss
    itself and, under torchrun, hands every rank its slice of the single process's batches.

    TRL 1.15 computes the SFT loss with a Triton kernel whenever Triton is importable (Unsloth installs it);
    without a GPU that kernel fails with "0 active drivers". The model's own loss, or `labelled_token_loss`
    (the same quantity, logits only where a label exists), replaces it. Packed batches arrive with their row
    boundaries, added on the host by the collator (smoltune.train.packing.BoundaryCollator).

    accelerate applies 16-bit autocast by wrapping `model.forward`; `labelled_token_loss` calls the decoder and
    the LM head directly, so the subclass enters the same autocast around the whole loss (transformers' hook)."""
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    fast, rank = fast or FastPath(), rank or Rank()
    if device == "cuda" and fast == FastPath() and rank.world == 1:
        return SFTTrainer
    autocast = precision.autocast_dtype if precision else None

    class FastSFTTrainer(SFTTrainer):
        def get_train_dataloader(self):  # noqa: ANN202
            if rank.world == 1:
                return super().get_train_dataloader()
            from smoltune.data.tokens import IGNORE_INDEX
            from smoltune.train.distributed import all_ranks_loader

            batch = self.args.per_device_train_batch_size * rank.world
            return all_ranks_loader(
                self.train_dataset, self.data_collator, batch, self.args.data_seed, rank, IGNORE_INDEX
            )

        def autocast_smart_context_manager(self, cache_enabled: bool | None = True):  # noqa: ANN202
            if autocast is None:
                return super().autocast_smart_context_manager(cache_enabled)
            return torch.autocast(device, dtype=getattr(torch, autocast), cache_enabled=cache_enabled)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            from smoltune.train.packing import labelled_token_loss

            if fast.labelled_logits_only and not return_outputs:
                loss = labelled_token_loss(model, inputs, num_items_in_batch)
                if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                    # num_items_in_batch counts all ranks' tokens and DDP averages gradients over ranks: scale
                    # back by the rank count, as Trainer.compute_loss does for a model's own loss.
                    loss = loss * self.accelerator.num_processes
                return loss
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return FastSFTTrainer


def data_collator(tokenizer: Any, fast: FastPath) -> Any:
    """TRL's padding-free collator for packed batches (given explicitly, so TRL does not warn that only
    FlashAttention handles them: segment attention does), adding the row boundaries on the host; None keeps
    TRL's padding collator."""
    if not fast.padding_free:
        return None
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from smoltune.train.packing import BoundaryCollator

    return BoundaryCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True))


def save_trained(trainer: Any, tokenizer: Any, mode: str, work_dir: Path, base_model_id: str | None = None) -> Path:
    """The adapter (LoRA: only the adapter, the base tokenizer is unchanged) or the whole model (full).

    PEFT records the folder the base was loaded from, a cache path of this machine; with `base_model_id` the
    adapter names its hub base instead, so `PeftModel.from_pretrained` and `vllm --lora-modules` work elsewhere."""
    target = work_dir / ("adapter" if mode == "lora" else "model")
    with atomic_dir(target) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        if mode == "full":
            tokenizer.save_pretrained(tmp)
        elif base_model_id:
            adapter_config = json.loads((tmp / "adapter_config.json").read_text())
            atomic_write_json(tmp / "adapter_config.json", {**adapter_config, "base_model_name_or_path": base_model_id})
    return target


def train(spec: TrainSpec, on_step: Callable[[dict[str, float], int], None] | None = None) -> TrainResult | None:
    """Train per `spec`, resuming from the last complete checkpoint; a finished folder returns its result.
    Under torchrun every rank trains its share and rank 0 alone saves and returns the result (others: None)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig

    from smoltune.train.checkpoints import (
        MarkCompleteCheckpoints,
        NoFinalCheckpoint,
        latest_complete_checkpoint,
        logged_steps,
    )
    from smoltune.train.distributed import from_rank_zero, join, leave
    from smoltune.train.instrumentation import PeakMemory, StepLog

    work_dir = Path(spec.work_dir)
    if (finished := finished_result(work_dir)) is not None:
        return finished
    config = TrainConfig.model_validate(spec.config)
    device = pick_device()
    check_quantisation(spec, config.mode, device)
    rank = join(device)
    backend, reason = resolve_backend(config.backend, device, rank.world)
    fast = FastPath.for_run(config, backend)
    # Measured once, by rank 0: every rank must train in the same precision.
    measured = resolve_precision(device, config.mode, config.precision, spec.model_path) if rank.is_main else None
    precision = from_rank_zero(measured, rank)
    fast, kernel_reason = with_kernel(fast, config, device, precision)
    torch.manual_seed(config.seed)
    model, tokenizer = load_for_training(backend, spec, config, device, fast, precision)
    trainable, total = count_parameters(model)
    rows = tokenize_rows(tokenizer, read_jsonl(spec.train_file), config.max_seq_length, config.train_on_responses_only)
    rows_per_step = config.batch_size * config.grad_accum // rank.world  # per process
    fast = fit_packing(fast, [len(r["input_ids"]) for r in rows], rows_per_step, config.speed.max_packed_tokens)
    settings = sft_settings(config, device, str(work_dir / "checkpoints"), fast, precision, rank.world)
    resume = latest_complete_checkpoint(work_dir / "checkpoints")
    earlier = logged_steps(resume) if resume else []
    step_log = StepLog(on_step)
    trainer = sft_trainer_class(device, fast, precision, rank)(
        model=model,
        args=SFTConfig(**settings),
        data_collator=data_collator(tokenizer, fast),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[step_log, MarkCompleteCheckpoints(rank), NoFinalCheckpoint()],
    )
    with PeakMemory(cuda=device == "cuda") as peak:
        started_at, started = datetime.now(UTC).isoformat(timespec="milliseconds"), time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        seconds = time.perf_counter() - started
    if not rank.is_main:
        leave(rank)
        return None
    output_dir = save_trained(trainer, tokenizer, config.mode, work_dir, spec.base_model_id)
    history = earlier + step_log.steps
    tokens = int(trainer.state.num_input_tokens_seen)
    tokens_this_run = tokens - (earlier[-1]["tokens_seen"] if earlier else 0)
    result = TrainResult(
        backend=backend,
        backend_reason=reason,
        mode=config.mode,
        rank=config.lora.r if config.mode == "lora" else None,
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
        saved_mb=round(dir_size_mb(output_dir), 3),
        resumed_from_step=int(earlier[-1]["step"]) if earlier else 0,
        precision=precision.name,
        processes=rank.world,
        host=socket.gethostname(),
        started_at=started_at,
        settings={
            **{k: v for k, v in settings.items() if k != "output_dir"},
            "fast_path": asdict(fast),
            "load_in_4bit": spec.load_in_4bit,
            "precision": precision.reason,
            "segment_kernel": kernel_reason,
            "matmul_gflops": precision.gflops,
        },
    )
    atomic_write_json(work_dir / RESULT_FILE, result.to_dict())
    leave(rank)
    return result
