"""What this machine's CPU is: its name and its feature flags (read from /proc/cpuinfo on Linux).

    python -c "from smoltune.machine import cpu_name, cpu_flags; print(cpu_name(), cpu_flags()[:5])"

Used where a choice or a figure depends on the machine: the precision measurement's cache key
(smoltune.train.precision) and the benchmarks' labels (bench/verdicts.py). On CUDA, the card's compute
capability decides what it computes in: `has_bf16` is the one rule for training, evaluation and kernels.
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Ampere (compute capability 8.0) is the first generation with bf16 units (and FlashAttention-2's kernels).
# torch.cuda.is_bf16_supported() also counts emulation: it says yes on the seed's T4 (7.5), where bf16 is slow.
AMPERE = (8, 0)


def _cpuinfo_field(name: str) -> str | None:
    lines = CPUINFO.read_text().splitlines() if CPUINFO.exists() else []
    return next((line.split(":", 1)[1] for line in lines if line.startswith(name)), None)


def cpu_flags() -> list[str]:
    """The CPU's feature flags (avx2, avx512_bf16, amx_bf16, ...); empty where /proc/cpuinfo has none."""
    return (_cpuinfo_field("flags") or "").split()


def cpu_name() -> str:
    """The CPU's model name, e.g. 'AMD EPYC'."""
    name = _cpuinfo_field("model name")
    return name.strip() if name else platform.processor() or "unknown CPU"


def cuda_capability() -> tuple[int, int]:
    """This machine's first CUDA card's compute capability, e.g. (7, 5) for a T4, (9, 0) for an H200."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return major, minor


def has_bf16(capability: tuple[int, int]) -> bool:
    """Whether a card of this compute capability computes in bf16 natively (A100, A10G, L4, H100, H200: yes;
    T4, V100: no)."""
    return tuple(capability) >= AMPERE


def card_name(capability: tuple[int, int]) -> str:
    return f"compute capability {capability[0]}.{capability[1]}"
