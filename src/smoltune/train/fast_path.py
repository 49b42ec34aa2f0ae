"""Which of `train.speed`'s CPU fast-path switches a run uses (smoltune.train.packing, fused_lora): what the
backend allows, the packed rows' attention kernel the device runs, and whether a whole step fits one pack.

    python -c "from smoltune.config import TrainConfig; from smoltune.train.fast_path import FastPath; \
print(FastPath.for_run(TrainConfig(), 'hf'))"
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from smoltune.config import TrainConfig
from smoltune.train.precision import Precision


@dataclass(frozen=True)
class FastPath:
    """Which switches of `train.speed` are in effect: they apply to the hf backend only (Unsloth brings its
    own kernels and collator)."""

    padding_free: bool = False
    pack_accumulation: bool = False
    labelled_logits_only: bool = False
    fused_lora: bool = False
    fused_optimizer: bool = False
    chunked_cross_entropy: bool = False
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
            chunked_cross_entropy=speed.labelled_logits_only and speed.chunked_cross_entropy and config.mode == "lora",
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
