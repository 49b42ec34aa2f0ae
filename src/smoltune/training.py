"""LoRA training with transformers + peft + trl, measured.

    python -c "from smoltune.training import train_lora; help(train_lora)"

`train_lora` takes a model folder and prepared JSONL files, writes a PEFT adapter folder (safetensors) and
returns the figures the report needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smoltune.config import TrainConfig
from smoltune.files import atomic_dir, dir_size_mb, read_jsonl
from smoltune.tokens import load_tokenizer, tokenize_rows

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced and measured; every field is JSON-serialisable."""

    backend: str
    mode: str
    rank: int
    device: str
    trainable_params: int
    total_params: int
    steps: int
    train_seconds: float
    tokens_seen: int
    tokens_per_second: float
    peak_memory_mb: float
    losses: list[float]
    step_log: list[dict[str, float]]
    adapter_dir: str
    adapter_mb: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params


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


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_and_tokenizer(model_path: str, device: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Base model in fp32 on the CPU (bf16 is slower than fp32 on CPUs without AMX) or bf16 on CUDA."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_path, trust_remote_code)
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
    ).to(device)
    return model, tokenizer


def sft_settings(config: TrainConfig, device: str, output_dir: str) -> dict[str, Any]:
    """SFTConfig arguments for the seed job. TRL's CPU defaults (gradient checkpointing, bf16) cost time on
    this hardware and are turned off; the optimizer is adamw_8bit on CUDA, adamw_torch on the CPU."""
    on_cuda = device == "cuda"
    return {
        "output_dir": output_dir,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.learning_rate,
        "warmup_steps": config.warmup_steps,
        "lr_scheduler_type": config.lr_scheduler,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "data_seed": config.seed,
        "max_length": config.max_seq_length,
        "optim": "adamw_8bit" if on_cuda else "adamw_torch",
        "bf16": on_cuda,
        "fp16": False,
        "use_cpu": not on_cuda,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "disable_tqdm": False,  # a progress bar in the terminal; the Prefect task logs every few steps
    }


def sft_trainer_class(device: str) -> type:
    """TRL's SFTTrainer, or on the CPU a subclass that computes the model's own cross-entropy.

    TRL 1.15 computes the SFT loss with a Triton kernel whenever Triton is importable (Unsloth installs it);
    without a GPU that kernel fails with "0 active drivers". The model's loss is the same quantity."""
    from transformers import Trainer
    from trl import SFTTrainer

    if device == "cuda":
        return SFTTrainer

    class CpuSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return CpuSFTTrainer


def train_lora(
    model_path: str,
    train_file: str,
    output_dir: str,
    config: TrainConfig,
    trust_remote_code: bool = False,
    on_step: Callable[[dict[str, float], int], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `train_file` (prepared JSONL) and save it to `output_dir/adapter`."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig

    from smoltune.metrics import PeakMemory, StepLog

    device = pick_device()
    torch.manual_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(model_path, device, trust_remote_code)
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    trainable, total = count_parameters(model)
    rows = tokenize_rows(tokenizer, read_jsonl(train_file), config.max_seq_length, config.train_on_responses_only)
    settings = sft_settings(config, device, str(Path(output_dir) / "trainer"))
    step_log = StepLog(on_step)
    trainer = sft_trainer_class(device)(
        model=model,
        args=SFTConfig(**settings),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[step_log],
    )
    with PeakMemory(cuda=device == "cuda") as peak:
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    adapter_dir = Path(output_dir) / "adapter"
    with atomic_dir(adapter_dir) as tmp:
        # Only the adapter: the base model's tokenizer is unchanged and would inflate the adapter size.
        trainer.model.save_pretrained(tmp, safe_serialization=True)
    tokens = int(trainer.state.num_input_tokens_seen)
    return TrainResult(
        backend="hf",
        mode="lora",
        rank=config.lora.r,
        device=device,
        trainable_params=trainable,
        total_params=total,
        steps=int(trainer.state.global_step),
        train_seconds=round(seconds, 3),
        tokens_seen=tokens,
        tokens_per_second=round(tokens / seconds, 2) if seconds > 0 else 0.0,
        peak_memory_mb=round(peak.megabytes, 1),
        losses=[s["loss"] for s in step_log.steps],
        step_log=step_log.steps,
        adapter_dir=str(adapter_dir),
        adapter_mb=round(dir_size_mb(adapter_dir), 3),
        settings={k: v for k, v in settings.items() if k != "output_dir"},
    )
