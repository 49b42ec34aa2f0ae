"""What this machine's CPU is: its name and its feature flags (read from /proc/cpuinfo on Linux).

    python -c "from smoltune.machine import cpu_name, cpu_flags; print(cpu_name(), cpu_flags()[:5])"

Used where a choice or a figure depends on the machine: the keys of measurements kept per machine
(`measured_once`: the precision's matmul rates, the attention kernel per shape) and the benchmarks' labels
(bench/verdicts.py). `other_load` tells whether other processes were busy while something was measured: such a
measurement is used once, never kept. On CUDA, the card's compute capability decides what it computes in:
`has_bf16` is the one rule for training, evaluation and kernels.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CPUINFO = Path("/proc/cpuinfo")
PROC_STAT = Path("/proc/stat")
# Other processes may keep at most this much of one core busy, on average, during a measurement worth caching.
IDLE_CORES = 0.25
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


@dataclass
class OtherLoad:
    """CPU cores other processes kept busy, on average, while a block ran (None: this system cannot tell)."""

    cores: float | None = None

    @property
    def idle(self) -> bool:
        return self.cores is not None and self.cores <= IDLE_CORES


def _busy_seconds() -> float | None:
    """Seconds all CPUs have spent busy since boot (Linux /proc/stat), else None."""
    try:
        fields = [int(x) for x in PROC_STAT.read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@contextmanager
def other_load() -> Iterator[OtherLoad]:
    """Measure how busy other processes kept the CPUs during the block: all CPUs' busy time minus this
    process's own (every thread's). Without /proc/stat, the load average before the block stands in."""
    load = OtherLoad()
    before, own, started = _busy_seconds(), time.process_time(), time.monotonic()
    average = os.getloadavg()[0] if before is None and hasattr(os, "getloadavg") else None
    yield load
    after, elapsed = _busy_seconds(), time.monotonic() - started
    if before is not None and after is not None and elapsed > 0:
        load.cores = round(max(0.0, (after - before) - (time.process_time() - own)) / elapsed, 3)
    else:
        load.cores = average


def cpu_kind() -> str:
    """The CPU's architecture, name and the flags that decide bf16's speed: what a measurement kept per machine
    is keyed by."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
    flags = ",".join(f for f in wanted if f in cpu_flags())
    return f"{platform.machine()} {cpu_name()} {flags}"


def machine_key(hardware: str | None = None) -> str:
    """What any measurement kept per machine depends on besides its own inputs: the hardware (this CPU's kind
    unless named, e.g. a CUDA card), torch's version and its thread count."""
    import torch

    return f"{hardware or cpu_kind()} | torch {torch.__version__} | threads {torch.get_num_threads()}"


def measured_once(
    cache: Path,
    key: str,
    measure: Callable[[], T],
    valid: Callable[[Any], bool],
    what: str | None = None,
    field: str = "value",
) -> T:
    """`measure()`'s value for `key`, kept under `field` in the JSON file `cache` (an entry per key) once it was
    measured on an idle machine. A value measured while other processes kept the CPUs busy is used by this caller
    only, never kept (stderr says so when `what` names it); a kept value that `valid` refuses, or an entry
    without `field` (written by earlier code without the idle check), is measured again. Keeping is best effort:
    a cache that cannot be written (read-only, full disk) costs a measurement next time, never the caller's run.
    Values are JSON data."""
    from smoltune.files import atomic_write_json

    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and field in entry and valid(entry[field]):
        return entry[field]
    with other_load() as load:
        value = measure()
    if not load.idle:
        if what:
            busy = "an unknown load" if load.cores is None else f"{load.cores:.2f} cores busy elsewhere"
            print(f"smoltune: {what} measured with {busy}: used for this run, not cached", file=sys.stderr)
        return value
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, {**known, key: {field: value, "other_cores": load.cores}})
    except OSError:
        pass  # best effort (see above)
    return value
