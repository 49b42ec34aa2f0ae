"""Pure arithmetic of the benchmark: the FLOPs each contender really does, MFU against the measured peak of the
precision it trained in, smoltune's ratio to the fastest contender, the loss comparison, and the verdicts against
the benchmark's goals. Tested in tests/bench/test_bench.py.

    python -c "import sys; sys.path.insert(0, 'bench'); import verdicts; help(verdicts.summarise)"

FLOPs per real token, LoRA (nanoGPT's `estimate_mfu` convention): the frozen matmuls cost 2·N forward and 2·N
backward (gradients of the activations only), the adapters 6·N_lora, attention 12·L·d·T (T = mean row length).
The LM head (N_head = vocab·d, a fifth of SmolLM2-135M) counts 4·N_head on every token for a contender that
computes all logits, and only on labelled tokens for one that computes logits only where a label exists.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path

from smoltune.machine import cpu_flags, cpu_name

# The goals. On a CPU with bf16 matrix units (AMX): >= 3x the fastest contender on both datasets and >= 35%
# of the bf16 matmul peak. Without them: >= 2x on the seed rows and >= 1.5x on the long-answer rows.
SPEEDUP_GOAL_AMX, MFU_GOAL_AMX = 3.0, 0.35
SPEEDUP_GOAL_OTHER = {"seed": 2.0, "long": 1.5}
# Largest per-step loss difference between smoltune and Unsloth that still counts as the same training: fp32
# curves differ by summation order only; bf16 rounds every matmul output to 8 mantissa bits (~0.4%), which
# compounds over the steps of a run.
LOSS_TOLERANCE = {"fp32": 0.02, "bf16": 0.06, "fp16": 0.06}
LORA_RANK, LORA_PROJECTIONS = 16, 7


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def matmul_params(model_dir: str | Path) -> int:
    """Parameters in the model's safetensors files (a tied LM head is stored, and counted, once), read from the
    files' headers without loading a tensor."""
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        total += sum(prod(info["shape"]) for name, info in header.items() if name != "__metadata__")
    return total


@dataclass(frozen=True)
class ModelShape:
    params: int  # all parameters, a tied head once
    head: int  # vocab x hidden: the LM head's matmul
    lora: int  # adapter parameters at LORA_RANK on the 7 projections
    layers: int
    hidden: int

    @property
    def body(self) -> int:
        return self.params - self.head


def model_shape(model_dir: str | Path) -> ModelShape:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = hidden * config.get("num_key_value_heads", config["num_attention_heads"]) // config["num_attention_heads"]
    # (in + out) per projection: q, o (hidden -> hidden), k, v (hidden -> kv), gate, up (hidden -> inner), down.
    per_layer = LORA_RANK * (2 * (2 * hidden) + 2 * (hidden + kv) + 3 * (hidden + inner))
    return ModelShape(matmul_params(model_dir), config["vocab_size"] * hidden, layers * per_layer, layers, hidden)


def flops_per_token(shape: ModelShape, labelled_share: float, mean_row: float, head_on_labels_only: bool) -> float:
    """FLOPs a LoRA step spends per real token (module docstring)."""
    head_share = labelled_share if head_on_labels_only else 1.0
    return 4 * shape.body + 4 * shape.head * head_share + 6 * shape.lora + 12 * shape.layers * shape.hidden * mean_row


def mfu(tokens_per_second: float, flops: float, peak_gflops: float) -> float:
    return tokens_per_second * flops / (peak_gflops * 1e9)


def max_loss_gap(losses: list[float], reference: list[float]) -> float:
    """Largest per-step difference between two loss curves over their common steps."""
    return max((abs(a - b) for a, b in zip(losses, reference, strict=False)), default=float("nan"))


def machine_label(flags: list[str] | None = None) -> str:
    """The CPU and the matmul features that decide its speed, e.g. 'AMD EPYC (avx2, avx512f, avx512_bf16)'."""
    flags = cpu_flags() if flags is None else flags
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{cpu_name()} ({', '.join(shown) or 'no AVX2'})"


@dataclass(frozen=True)
class DataStats:
    labelled_share: float  # labelled tokens / real tokens over the rows
    mean_row: float  # mean real tokens per row


def summarise(
    figures: dict[str, dict],
    dataset: str,
    peaks: dict[str, float],
    shape: ModelShape,
    stats: DataStats,
    amx: bool,
    baselines: tuple[str, ...],
) -> dict:
    """Utilisation of every contender, and for smoltune the ratio, memory and loss verdicts of one dataset.
    `figures[key]` holds tokens_per_second, peak_rss_mb, losses and precision; smoltune computes logits only
    on labelled tokens, every other contender on all of them."""
    utilisation = {}
    for key, result in figures.items():
        flops = flops_per_token(shape, stats.labelled_share, stats.mean_row, head_on_labels_only=key == "smoltune")
        used = result.get("precision", "fp32")
        utilisation[key] = {
            "precision": used,
            "flops_per_token": round(flops),
            "mfu": round(mfu(result["tokens_per_second"], flops, peaks.get(used, peaks["fp32"])), 4),
            "mfu_of_fp32_peak": round(mfu(result["tokens_per_second"], flops, peaks["fp32"]), 4),
        }
    summary: dict = {"dataset": dataset, "data": asdict(stats), "utilisation": utilisation, "verdicts": []}
    present = [key for key in baselines if key in figures]
    if "smoltune" not in figures or not present:
        return summary
    ours = figures["smoltune"]
    fastest = max(present, key=lambda key: figures[key]["tokens_per_second"])
    ratio = ours["tokens_per_second"] / figures[fastest]["tokens_per_second"]
    gaps = {key: round(max_loss_gap(ours["losses"], figures[key]["losses"]), 5) for key in present}
    goal = SPEEDUP_GOAL_AMX if amx else SPEEDUP_GOAL_OTHER.get(dataset, SPEEDUP_GOAL_AMX)
    summary.update(fastest_contender=fastest, speed_ratio=round(ratio, 3), loss_gap=gaps)
    verdicts = [
        f"speed ({dataset}): smoltune {ratio:.2f}x the fastest contender ({fastest}); goal >= {goal:g}x "
        f"({'AMX' if amx else 'no AMX'}): " + ("met" if ratio >= goal else "NOT met"),
    ]
    ours_mfu = utilisation["smoltune"]["mfu"]
    mfu_line = (
        f"utilisation ({dataset}): smoltune {ours_mfu:.1%} of the measured {utilisation['smoltune']['precision']} "
        f"peak ({utilisation['smoltune']['mfu_of_fp32_peak']:.1%} of the fp32 peak)"
    )
    if amx:
        mfu_line += f"; goal >= {MFU_GOAL_AMX:.0%}: " + ("met" if ours_mfu >= MFU_GOAL_AMX else "NOT met")
    verdicts.append(mfu_line)
    rss_ok = ours["peak_rss_mb"] <= figures[fastest]["peak_rss_mb"]
    verdicts.append(
        f"memory ({dataset}): peak RSS {ours['peak_rss_mb']:,.0f} MiB vs {figures[fastest]['peak_rss_mb']:,.0f} MiB "
        f"({fastest}); " + ("met" if rss_ok else "NOT met")
    )
    if "unsloth" in gaps:
        precisions = {ours.get("precision", "fp32"), figures["unsloth"].get("precision", "fp32")}
        tolerance = max(LOSS_TOLERANCE[p] for p in precisions)
        same = gaps["unsloth"] <= tolerance
        verdicts.append(
            f"quality ({dataset}): largest per-step loss difference vs unsloth {gaps['unsloth']:.4f} "
            f"({' vs '.join(sorted(precisions))}); within {tolerance}: " + ("yes" if same else "NO")
        )
    summary["verdicts"] = verdicts
    return summary
