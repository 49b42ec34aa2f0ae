"""The TRL side of a training run: SFTConfig settings, the trainer class with the fast path's loss and data
order, and the collator (TRL's padding-free one with host-side row boundaries, or its padded one).

    python -c "from smoltune.config import TrainConfig; from smoltune.train.sft import sft_settings; \
print(sft_settings(TrainConfig(), 'cpu', '/tmp/x')['bf16'])"
"""

from __future__ import annotations

from typing import Any

from smoltune.config import TrainConfig
from smoltune.train.distributed import Rank
from smoltune.train.fast_path import FastPath
from smoltune.train.precision import FP32, Precision


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
        # Rows arrive tokenised, cut and filtered (smoltune.train.trainer.rows_to_train): TRL's own preparation
        # would map over every row again on every run (6 s at 52,000 rows).
        "dataset_kwargs": {"skip_prepare_dataset": True},
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
        "report_to": config.report_to or "none",  # train.report_to: W&B, TensorBoard... passed through
        # A packed batch has no padding (and no attention mask to count by): every token is real.
        "include_num_input_tokens_seen": "all" if fast.padding_free else "non_padding",
        "dataloader_num_workers": 0,
        # Every trainable weight takes part in every step: no search for unused ones (a pass over the graph).
        "ddp_find_unused_parameters": False,
        "ddp_backend": ("nccl" if on_cuda else "gloo") if processes > 1 else None,
        "disable_tqdm": False,  # a progress bar in the terminal; the Prefect task logs every few steps
    }


class FastLoss:
    """What `sft_trainer_class` puts in front of TRL's SFTTrainer. A mixin rather than a subclass: this module
    does not import TRL, and the class it extends is the SFTTrainer in place when training starts (Unsloth's
    own once the unsloth backend has patched trl). The composed class sets the attributes below."""

    fast_path: FastPath = FastPath()
    process_rank: Rank = Rank()
    autocast_device: str = "cpu"
    autocast_dtype: str | None = None  # None: transformers' own autocast

    def get_train_dataloader(self):  # noqa: ANN202
        if self.process_rank.world == 1:
            return super().get_train_dataloader()
        from smoltune.data.tokens import IGNORE_INDEX
        from smoltune.train.distributed import all_ranks_loader

        batch = self.args.per_device_train_batch_size * self.process_rank.world
        return all_ranks_loader(
            self.train_dataset, self.data_collator, batch, self.args.data_seed, self.process_rank, IGNORE_INDEX
        )

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):  # noqa: ANN202
        if self.autocast_dtype is None:
            return super().autocast_smart_context_manager(cache_enabled)
        import torch

        return torch.autocast(
            self.autocast_device, dtype=getattr(torch, self.autocast_dtype), cache_enabled=cache_enabled
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        from transformers import Trainer

        from smoltune.train.packing import LABELLED_POSITIONS, labelled_token_loss

        if self.fast_path.labelled_logits_only and not return_outputs:
            loss = labelled_token_loss(model, inputs, num_items_in_batch, self.fast_path.chunked_cross_entropy)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                # num_items_in_batch counts all ranks' tokens and DDP averages gradients over ranks: scale
                # back by the rank count, as Trainer.compute_loss does for a model's own loss.
                loss = loss * self.accelerator.num_processes
            return loss
        inputs = {k: v for k, v in inputs.items() if k != LABELLED_POSITIONS}  # for labelled_token_loss only
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


def sft_trainer_class(
    device: str, fast: FastPath | None = None, precision: Precision | None = None, rank: Rank | None = None
) -> type:
    """TRL's SFTTrainer, or (on the CPU, with the fast path, or data-parallel) one with `FastLoss` in front that
    computes the loss itself and, under torchrun, hands every rank its slice of the single process's batches.

    TRL 1.15 computes the SFT loss with a Triton kernel whenever Triton is importable (Unsloth installs it);
    without a GPU that kernel fails with "0 active drivers". The model's own loss, or `labelled_token_loss`
    (the same quantity, logits only where a label exists), replaces it. Packed batches arrive with their row
    boundaries, added on the host by the collator (smoltune.train.packing.BoundaryCollator).

    accelerate applies 16-bit autocast by wrapping `model.forward`; `labelled_token_loss` calls the decoder and
    the LM head directly, so `FastLoss` enters the same autocast around the whole loss (transformers' hook)."""
    from trl import SFTTrainer

    fast, rank = fast or FastPath(), rank or Rank()
    if device == "cuda" and fast == FastPath() and rank.world == 1:
        return SFTTrainer
    settings = {
        "fast_path": fast,
        "process_rank": rank,
        "autocast_device": device,
        "autocast_dtype": precision.autocast_dtype if precision else None,
    }
    return type("FastSFTTrainer", (FastLoss, SFTTrainer), settings)


def data_collator(tokenizer: Any, fast: FastPath) -> Any:
    """TRL's padding-free collator for packed batches (given explicitly, so TRL does not warn that only
    FlashAttention handles them: segment attention does), adding the row boundaries on the host; None keeps
    TRL's padding collator."""
    if not fast.padding_free:
        return None
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from smoltune.train.packing import BoundaryCollator

    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    return BoundaryCollator(collate, labelled_positions=fast.labelled_logits_only)
