"""What this machine's CPU is: its name and its feature flags (read from /proc/cpuinfo on Linux).

    python -c "from smoltune.machine import cpu_name, cpu_flags; print(cpu_name(), cpu_flags()[:5])"

Used where a choice or a figure depends on the machine: the precision measurement's cache key
(smoltune.train.precision) and the benchmarks' labels (bench/verdicts.py).
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


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
