"""Pure arithmetic of the benchmark: MFU, smoltune's ratio to the faster baseline, the loss comparison and the
verdicts against issue 7's goals. Tested in tests/test_bench.py.

    python -c "import sys; sys.path.insert(0, 'bench'); import verdicts; help(verdicts.summarise)"
"""

from __future__ import annotations

import json
import platform
import struct
from math import prod
from pathlib import Path

# Goals: >= 3x the faster baseline's real tokens/s, >= 40% of the measured matmul peak, peak RSS <= the faster
# baseline's; and no loss in training quality: each step's loss within LOSS_TOLERANCE of the faster baseline's
# (the gaps to the other baseline are shown too: TRL's default bf16 autocast alone moves its curve).
SPEEDUP_GOAL = 3.0
MFU_GOAL = 0.40
LOSS_TOLERANCE = 0.05


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def matmul_params(model_dir: str | Path) -> int:
    """Parameters in the model's safetensors files (a tied LM head is stored, and counted, once): the N of
    MFU = 4·N·tokens/s ÷ peak. Read from the files' headers, without loading a tensor."""
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        total += sum(prod(info["shape"]) for name, info in header.items() if name != "__metadata__")
    return total


def mfu(tokens_per_second: float, params: int, peak_gflops: float) -> float:
    """Model FLOPs utilisation with the issue's convention: a LoRA step costs about 4·N FLOP per real token."""
    return 4 * params * tokens_per_second / (peak_gflops * 1e9)


def max_loss_gap(losses: list[float], reference: list[float]) -> float:
    """Largest per-step difference between two loss curves over their common steps."""
    return max((abs(a - b) for a, b in zip(losses, reference, strict=False)), default=float("nan"))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_label() -> str:
    """The CPU and the matmul features that decide its speed (from /proc/cpuinfo flags), e.g. 'AMD EPYC (avx2)'."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{cpu_name()} ({', '.join(shown) or 'no AVX2'})"


def summarise(figures: dict[str, dict], peak_gflops: float, params: int, baselines: tuple[str, ...]) -> dict:
    """Ratios, MFU and verdict lines for the contenders in `figures` (keyed trl / unsloth / smoltune)."""
    summary: dict = {
        "peak_gflops": peak_gflops,
        "matmul_params": params,
        "mfu": {key: round(mfu(r["tokens_per_second"], params, peak_gflops), 4) for key, r in figures.items()},
        "verdicts": [],
    }
    present = [key for key in baselines if key in figures]
    if "smoltune" not in figures or not present:
        return summary
    ours = figures["smoltune"]
    faster = max(present, key=lambda key: figures[key]["tokens_per_second"])
    ratio = ours["tokens_per_second"] / figures[faster]["tokens_per_second"]
    gaps = {key: round(max_loss_gap(ours["losses"], figures[key]["losses"]), 5) for key in present}
    summary.update(faster_baseline=faster, speed_ratio=round(ratio, 3), loss_gap=gaps)
    rss_ok = ours["peak_rss_mb"] <= figures[faster]["peak_rss_mb"]
    summary["verdicts"] = [
        f"speed: smoltune {ratio:.2f}x the faster baseline ({faster}); goal >= {SPEEDUP_GOAL:.0f}x: "
        + ("met" if ratio >= SPEEDUP_GOAL else "NOT met"),
        f"MFU: {summary['mfu']['smoltune']:.1%} of the measured matmul peak; goal >= {MFU_GOAL:.0%}: "
        + ("met" if summary["mfu"]["smoltune"] >= MFU_GOAL else "NOT met"),
        f"memory: peak RSS {ours['peak_rss_mb']:,.0f} MiB vs {figures[faster]['peak_rss_mb']:,.0f} MiB ({faster}); "
        + ("met" if rss_ok else "NOT met"),
        f"quality: largest per-step loss difference {gaps[faster]:.4f} vs {faster}; within {LOSS_TOLERANCE}: "
        + ("yes" if gaps[faster] <= LOSS_TOLERANCE else "NO")
        + "".join(f" (vs {key}: {gap:.4f})" for key, gap in gaps.items() if key != faster),
    ]
    return summary
