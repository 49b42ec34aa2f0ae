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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smoltune.config import UNSLOTH_ONE_PROCESS, TrainConfig
from smoltune.data.tokens import IGNORE_INDEX, load_token_ids, token_ids, training_rows
from smoltune.errors import ConfigError
from smoltune.files import atomic_dir, atomic_write_json, dir_size_mb, read_jsonl
from smoltune.model import load_model_and_tokenizer, pick_device
from smoltune.records import TrainResult
from smoltune.train.distributed import Rank
from smoltune.train.fast_path import FastPath, fit_packing, with_kernel
from smoltune.train.precision import DTYPES, Precision, resolve_precision
from smoltune.train.sft import data_collator, sft_settings, sft_trainer_class
from smoltune.train.spec import RESULT_FILE, TrainSpec, finished_result

# On the CPU the hf backend with its fast path (smoltune.train.packing) trains faster than Unsloth's own CPU path
# with the same per-step losses (`make bench`; figures and machines in docs/benchmarks.md, "Backend choice"),
# and Unsloth's import patches trl process-wide; so auto picks hf on the CPU.
CPU_AUTO_BACKEND = "hf"
UNSLOTH_FP32 = (
    "train.backend=unsloth with train.precision=fp32 on a GPU: Unsloth trains in 16 bits there; use "
    "train.backend=hf (or auto) for fp32, or train.precision=auto"
)
CPU_AUTO_REASON = (
    "auto on CPU: hf with its fast path, faster than Unsloth's CPU path (`make bench`, docs/benchmarks.md)"
)


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


def resolve_backend(requested: str, device: str, processes: int = 1, precision: str = "bf16") -> tuple[str, str]:
    """(backend, reason) for `train.backend`; data-parallel training (torchrun) runs the hf backend. On CUDA
    Unsloth trains in 16 bits whatever it is told (its trainer turns bf16 autocast on when neither bf16 nor
    fp16 is set), so an fp32 training there is the hf backend's."""
    if processes > 1:
        if requested == "unsloth":
            raise ConfigError([UNSLOTH_ONE_PROCESS])
        return "hf", f"{processes} data-parallel processes: hf (torchrun + DistributedDataParallel)"
    unsloth_16_bit = device == "cuda" and precision == "fp32"
    if requested == "unsloth" and unsloth_16_bit:
        raise ConfigError([UNSLOTH_FP32])
    if requested != "auto":
        return requested, "set by train.backend"
    if unsloth_16_bit:
        return "hf", "auto on CUDA in fp32: hf (Unsloth trains in 16 bits on a GPU)"
    if device == "cuda":
        return "unsloth", "auto on CUDA: Unsloth's kernels"
    return CPU_AUTO_BACKEND, CPU_AUTO_REASON


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


@dataclass(frozen=True)
class Setup:
    """What a training decided and loaded before its trainer exists."""

    config: TrainConfig
    device: str
    process_rank: Rank  # this process's place under torchrun
    backend: str
    backend_reason: str
    fast: FastPath
    kernel_reason: str
    precision: Precision
    model: Any
    tokenizer: Any
    rows: list[dict[str, Any]]
    trainable: int
    total: int
    settings: dict[str, Any]  # SFTConfig's arguments


def rows_to_train(spec: TrainSpec, tokenizer: Any, config: TrainConfig) -> list[dict[str, Any]]:
    """input_ids and labels of the training rows, cut to max_seq_length: from the prepare stage's token ids when
    it made them (no tokenisation here), else tokenised now. Rows left without a labelled token (a prompt that
    fills max_seq_length) add no loss and are dropped, as TRL's own preparation (skipped: see sft_settings) does."""
    ids = load_token_ids(spec.train_tokens) if spec.train_tokens else token_ids(tokenizer, read_jsonl(spec.train_file))
    rows = training_rows(ids, config.max_seq_length, config.train_on_responses_only)
    kept = [row for row in rows if any(label != IGNORE_INDEX for label in row["labels"])]
    if rows and not kept:
        raise ConfigError(
            [
                f"train.max_seq_length: every training row's prompt fills its {config.max_seq_length} tokens, "
                "leaving no answer token to learn from; raise it or shorten the prompts"
            ]
        )
    return kept


def train_dataset(rows: list[dict[str, Any]]) -> Any:
    """The rows as a `datasets.Dataset`, built column-wise (faster than row by row on 50k rows)."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})


def set_up(spec: TrainSpec, work_dir: Path) -> Setup:
    """Device, process rank, backend, precision and fast path decided; model, tokenizer and rows loaded."""
    import torch

    from smoltune.train.distributed import from_rank_zero, join

    config = TrainConfig.model_validate(spec.config)
    device = pick_device()
    check_quantisation(spec, config.mode, device)
    rank = join(device)
    # Measured once, by rank 0: every rank must train in the same precision; a resumed training keeps the one it
    # started in (stored in its work folder), so a busy machine cannot switch it halfway.
    measured = None
    if rank.is_main:
        measured = resolve_precision(device, config.mode, config.precision, spec.model_path, work_dir)
    precision = from_rank_zero(measured, rank)
    backend, reason = resolve_backend(config.backend, device, rank.world, precision.name)
    fast = FastPath.for_run(config, backend)
    fast, kernel_reason = with_kernel(fast, config, device, precision)
    torch.manual_seed(config.seed)
    model, tokenizer = load_for_training(backend, spec, config, device, fast, precision)
    trainable, total = count_parameters(model)
    rows = rows_to_train(spec, tokenizer, config)
    rows_per_step = config.batch_size * config.grad_accum // rank.world  # per process
    fast = fit_packing(fast, [len(r["input_ids"]) for r in rows], rows_per_step, config.speed.max_packed_tokens)
    settings = sft_settings(config, device, str(work_dir / "checkpoints"), fast, precision, rank.world)
    if backend == "unsloth":
        # Unsloth's own preparation of the (already cut) rows is what lets its trainer keep padding-free batching
        # on; skipped, it scans every row and turns it off.
        settings.pop("dataset_kwargs", None)
    return Setup(
        config=config,
        device=device,
        process_rank=rank,
        backend=backend,
        backend_reason=reason,
        fast=fast,
        kernel_reason=kernel_reason,
        precision=precision,
        model=model,
        tokenizer=tokenizer,
        rows=rows,
        trainable=trainable,
        total=total,
        settings=settings,
    )


def build_trainer(setup: Setup, args: Any, train_dataset: Any, step_log: Any, stopper: Any) -> Any:
    """The trainer over `train_dataset` with `args` (an SFTConfig), relaying steps to `step_log`, marking
    each checkpoint complete once written, and stopping with a checkpoint on a signal (`stopper`)."""
    from smoltune.train.checkpoints import MarkCompleteCheckpoints, NoFinalCheckpoint

    return sft_trainer_class(setup.device, setup.fast, setup.precision, setup.process_rank)(
        model=setup.model,
        args=args,
        data_collator=data_collator(setup.tokenizer, setup.fast),
        train_dataset=train_dataset,
        processing_class=setup.tokenizer,
        callbacks=[step_log, MarkCompleteCheckpoints(setup.process_rank), NoFinalCheckpoint(), stopper],
    )


@dataclass(frozen=True)
class LoopFigures:
    """What the training loop measured. A resumed run's figures continue the earlier runs' logged steps."""

    started_at: str  # UTC, ISO 8601
    seconds: float
    peak_memory_mb: float
    earlier: list[dict[str, float]]  # steps logged before this run resumed
    steps: list[dict[str, float]]  # steps this run logged


def collect_result(setup: Setup, spec: TrainSpec, trainer: Any, output_dir: Path, loop: LoopFigures) -> TrainResult:
    """The figures of a finished training, the settings it ran with included."""
    config, precision = setup.config, setup.precision
    history = loop.earlier + loop.steps
    tokens = int(trainer.state.num_input_tokens_seen)
    tokens_this_run = tokens - (loop.earlier[-1]["tokens_seen"] if loop.earlier else 0)
    return TrainResult(
        backend=setup.backend,
        backend_reason=setup.backend_reason,
        mode=config.mode,
        lora_rank=config.lora.r if config.mode == "lora" else None,
        device=setup.device,
        trainable_params=setup.trainable,
        total_params=setup.total,
        steps=int(trainer.state.global_step),
        train_seconds=round(loop.seconds, 3),
        tokens_seen=tokens,
        tokens_per_second=round(tokens_this_run / loop.seconds, 2) if loop.seconds > 0 else 0.0,
        peak_memory_mb=round(loop.peak_memory_mb, 1),
        losses=[s["loss"] for s in history],
        step_log=history,
        output_dir=str(output_dir),
        saved_mb=round(dir_size_mb(output_dir), 3),
        resumed_from_step=int(loop.earlier[-1]["step"]) if loop.earlier else 0,
        precision=precision.name,
        processes=setup.process_rank.world,
        host=socket.gethostname(),
        started_at=loop.started_at,
        settings={
            **{k: v for k, v in setup.settings.items() if k != "output_dir"},
            "fast_path": asdict(setup.fast),
            "load_in_4bit": spec.load_in_4bit,
            "precision": precision.reason,
            "segment_kernel": setup.kernel_reason,
            "matmul_gflops": precision.gflops,
        },
    )


def load_libraries() -> None:
    """What training imports before anything else (also what a prestarted worker imports while it waits for
    its spec). torch, datasets, trl and transformers (through checkpoints) load before the backend: Unsloth's
    import then patches a trl already loaded, as in every measured run; loaded after Unsloth, they may be
    patched otherwise."""
    import datasets  # noqa: F401
    import torch  # noqa: F401
    from trl import SFTConfig  # noqa: F401

    import smoltune.train.checkpoints  # noqa: F401


def train(
    spec: TrainSpec,
    on_step: Callable[[dict[str, float], int], None] | None = None,
    on_begin: Callable[[], None] | None = None,
) -> TrainResult | None:
    """Train per `spec`, resuming from the last complete checkpoint; a finished folder returns its result.
    Under torchrun every rank trains its share and rank 0 alone saves and returns the result (others: None)."""
    load_libraries()
    from trl import SFTConfig

    from smoltune.train.checkpoints import StopOnSignal, latest_complete_checkpoint, logged_steps
    from smoltune.train.distributed import leave
    from smoltune.train.instrumentation import PeakMemory, StepLog

    work_dir = Path(spec.work_dir)
    if (finished := finished_result(work_dir)) is not None:
        return finished
    setup = set_up(spec, work_dir)
    resume = latest_complete_checkpoint(work_dir / "checkpoints")
    earlier = logged_steps(resume) if resume else []
    step_log = StepLog(on_step, loss_scaling=setup.precision.fp16, on_begin=on_begin)
    stopper = StopOnSignal()
    trainer = build_trainer(setup, SFTConfig(**setup.settings), train_dataset(setup.rows), step_log, stopper)
    with PeakMemory(cuda=setup.device == "cuda") as peak:
        started_at, started = datetime.now(UTC).isoformat(timespec="milliseconds"), time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        seconds = time.perf_counter() - started
    stopper.raise_if_stopped(trainer.state.global_step, trainer.state.max_steps)
    if not setup.process_rank.is_main:
        leave(setup.process_rank)
        return None
    output_dir = save_trained(trainer, setup.tokenizer, setup.config.mode, work_dir, spec.base_model_id)
    result = collect_result(
        setup, spec, trainer, output_dir, LoopFigures(started_at, seconds, peak.megabytes, earlier, step_log.steps)
    )
    atomic_write_json(work_dir / RESULT_FILE, result.to_dict())
    leave(setup.process_rank)
    return result
