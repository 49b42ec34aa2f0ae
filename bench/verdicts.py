"""Pure arithmetic of the benchmark: the FLOPs each contender really does, MFU against the measured peak of the
precision it trained in, smoltune's ratio to the fastest contender, the loss comparison, and the verdicts against
the benchmark's goals. Tested in tests/bench/test_bench.py.

    python -c "import sys; sys.path.insert(0, 'bench'); import verdicts; help(verdicts.summarise)"

FLOPs per real token, LoRA (nanoGPT's `estimate_mfu` convention): the frozen matmuls cost 2·N forward and 2·N
backward (gradients of the activations only), the adapters 6·N_lora, attention 12·L·d·T (T = mean row length).
The LM head (N_head = vocab·d, a fifth of SmolLM2-135M) counts 4·N_head on every token for a contender that
computes all logits, and only on labelled tokens for one that computes logits only where a label exists.

A contender stopped at its time box (bench/timebox.py, `finished: false`) counts at the speed it reached; one
stopped before its first micro-batch has none and is left out of the fastest. Losses are compared over the steps
both contenders logged. Every verdict line a stopped contender enters says "did not finish".
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path

from smoltune.machine import cpu_flags, cpu_name

# The goals, by the CPU's bf16 hardware (`cpu_kind`): with bf16 matrix units (AMX) >= 3x the fastest contender
# on both datasets and >= 35% of the bf16 matmul peak; with bf16 dot products (avx512_bf16) >= 2x on both; with
# neither (bf16 emulated, training in fp32) >= 2x on the seed rows and >= 1.5x on the long-answer rows. Datasets
# without a goal of their own (the `max` rows) are judged by the long rows'.
SPEEDUP_GOALS = {
    "AMX": {"seed": 3.0, "long": 3.0},
    "avx512_bf16": {"seed": 2.0, "long": 2.0},
    "no bf16 units": {"seed": 2.0, "long": 1.5},
}
MFU_GOAL_AMX = 0.35
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


def cpu_kind(flags: list[str] | None = None) -> str:
    """Which row of SPEEDUP_GOALS this CPU's flags put it in."""
    flags = cpu_flags() if flags is None else flags
    return "AMX" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "no bf16 units"


def machine_label(flags: list[str] | None = None) -> str:
    """The CPU and the matmul features that decide its speed, e.g. 'AMD EPYC (avx2, avx512f, avx512_bf16)'."""
    flags = cpu_flags() if flags is None else flags
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{cpu_name()} ({', '.join(shown) or 'no AVX2'})"


@dataclass(frozen=True)
class DataStats:
    labelled_share: float  # labelled tokens / real tokens over the rows
    mean_row: float  # mean real tokens per row


def finished(result: dict) -> bool:
    """False for a contender stopped at its time box (bench/timebox.py); figures without the flag finished."""
    return result.get("finished", True)


def dnf(result: dict) -> str:
    """' (did not finish: 3 of 10 steps)' for a contender stopped at its time box, '' for one that finished."""
    return "" if finished(result) else f" (did not finish: {result['steps']} of {result['steps_planned']} steps)"


def rss(result: dict) -> str:
    """Peak RSS as measured: a stopped contender's is its process's high-water mark at the stop."""
    if result.get("peak_rss_mb") is None:
        return "unknown"
    return f"{result['peak_rss_mb']:,.0f} MiB" + ("" if finished(result) else " (high-water mark)")


def utilisation_of(key: str, result: dict, peaks: dict[str, float], shape: ModelShape, stats: DataStats) -> dict:
    """MFU against the peak of the precision the contender trained in, and against the fp32 peak; None for a
    contender stopped before its first micro-batch (no speed)."""
    flops = flops_per_token(shape, stats.labelled_share, stats.mean_row, head_on_labels_only=key == "smoltune")
    used, speed = result.get("precision", "fp32"), result["tokens_per_second"]
    return {
        "precision": used,
        "finished": finished(result),
        "flops_per_token": round(flops),
        "mfu": None if speed is None else round(mfu(speed, flops, peaks.get(used or "fp32", peaks["fp32"])), 4),
        "mfu_of_fp32_peak": None if speed is None else round(mfu(speed, flops, peaks["fp32"]), 4),
    }


def summarise(
    figures: dict[str, dict],
    dataset: str,
    peaks: dict[str, float],
    shape: ModelShape,
    stats: DataStats,
    kind: str,
    baselines: tuple[str, ...],
) -> dict:
    """Utilisation of every contender, and for smoltune the ratio, memory and loss verdicts of one dataset.
    `figures[key]` holds tokens_per_second, peak_rss_mb, losses and precision; smoltune computes logits only
    on labelled tokens, every other contender on all of them. A contender stopped at its time box carries
    `finished: false` (its speed is the one it reached; None before its first micro-batch, which leaves it out
    of the fastest) and every verdict line it enters says so."""
    utilisation = {key: utilisation_of(key, result, peaks, shape, stats) for key, result in figures.items()}
    summary: dict = {"dataset": dataset, "data": asdict(stats), "utilisation": utilisation, "verdicts": []}
    present = [key for key in baselines if key in figures]
    if "smoltune" not in figures or not present:
        return summary
    ours = figures["smoltune"]
    timed = [key for key in present if figures[key]["tokens_per_second"] is not None]
    fastest = max(timed, key=lambda key: figures[key]["tokens_per_second"], default=None)
    ratio = None
    if fastest is not None and ours["tokens_per_second"] is not None:
        ratio = ours["tokens_per_second"] / figures[fastest]["tokens_per_second"]
    gaps = {key: common_loss_gap(ours["losses"], figures[key]["losses"]) for key in present}
    summary.update(fastest_contender=fastest, speed_ratio=None if ratio is None else round(ratio, 3), loss_gap=gaps)
    summary["left_out_of_fastest"] = [key for key in present if key not in timed]
    summary["verdicts"] = [
        speed_verdict(figures, dataset, present, fastest, ratio, kind),
        utilisation_verdict(ours, utilisation["smoltune"], dataset, kind == "AMX"),
        memory_verdict(figures, dataset, fastest),
    ]
    if "unsloth" in gaps:
        summary["verdicts"].append(quality_verdict(ours, figures["unsloth"], gaps["unsloth"], dataset))
    return summary


def common_loss_gap(losses: list[float], reference: list[float]) -> float | None:
    """max_loss_gap over the steps both logged, rounded; None when they logged no step in common."""
    return round(max_loss_gap(losses, reference), 5) if losses and reference else None


def speed_verdict(
    figures: dict[str, dict], dataset: str, present: list[str], fastest: str | None, ratio: float | None, kind: str
) -> str:
    ours = figures["smoltune"]
    goal = SPEEDUP_GOALS[kind].get(dataset, SPEEDUP_GOALS[kind]["long"])
    line = f"speed ({dataset}): smoltune{dnf(ours)} "
    if ours["tokens_per_second"] is None:
        line += f"finished no micro-batch: no speed; goal >= {goal:g}x not judged"
    elif fastest is None:
        line += f"has no contender to compare with; goal >= {goal:g}x not judged"
    else:
        line += (
            f"{ratio:.2f}x the fastest contender ({fastest}{dnf(figures[fastest])}); goal >= {goal:g}x "
            f"({kind}): " + ("met" if ratio >= goal else "NOT met")
        )
    untimed = [key for key in present if figures[key]["tokens_per_second"] is None]
    if untimed:
        line += f"; left out of the fastest: {', '.join(untimed)} (did not finish: no micro-batch finished)"
    stopped = [key for key in present if key not in untimed and key != fastest and not finished(figures[key])]
    if stopped:
        line += "; counted at the speed reached before the stop: " + ", ".join(f"{k}{dnf(figures[k])}" for k in stopped)
    return line


def utilisation_verdict(ours: dict, use: dict, dataset: str, amx: bool) -> str:
    if use["mfu"] is None:
        line = f"utilisation ({dataset}): smoltune{dnf(ours)} finished no micro-batch: no utilisation"
        return line + (f"; goal >= {MFU_GOAL_AMX:.0%} not judged" if amx else "")
    line = (
        f"utilisation ({dataset}): smoltune{dnf(ours)} {use['mfu']:.1%} of the measured {use['precision']} "
        f"peak ({use['mfu_of_fp32_peak']:.1%} of the fp32 peak)"
    )
    if amx:
        line += f"; goal >= {MFU_GOAL_AMX:.0%}: " + ("met" if use["mfu"] >= MFU_GOAL_AMX else "NOT met")
    return line


def memory_verdict(figures: dict[str, dict], dataset: str, fastest: str | None) -> str:
    ours = figures["smoltune"]
    line = f"memory ({dataset}): smoltune{dnf(ours)} peak RSS {rss(ours)}"
    if fastest is None:
        return line + "; no fastest contender to compare with: not judged"
    theirs = figures[fastest]
    line += f" vs {rss(theirs)} ({fastest}{dnf(theirs)}); "
    if ours.get("peak_rss_mb") is None or theirs.get("peak_rss_mb") is None:
        return line + "not judged"
    return line + ("met" if ours["peak_rss_mb"] <= theirs["peak_rss_mb"] else "NOT met")


def quality_verdict(ours: dict, unsloth: dict, gap: float | None, dataset: str) -> str:
    precisions = {p for p in (ours.get("precision", "fp32"), unsloth.get("precision", "fp32")) if p}
    if gap is None:
        return (
            f"quality ({dataset}): smoltune{dnf(ours)} and unsloth{dnf(unsloth)} logged no loss at a common step: "
            "not compared"
        )
    tolerance = max(LOSS_TOLERANCE.get(p, max(LOSS_TOLERANCE.values())) for p in precisions)
    line = (
        f"quality ({dataset}): largest per-step loss difference vs unsloth {gap:.4f} "
        f"({' vs '.join(sorted(precisions))}); within {tolerance}: " + ("yes" if gap <= tolerance else "NO")
    )
    if not (finished(ours) and finished(unsloth)):
        common = min(len(ours["losses"]), len(unsloth["losses"]))
        line += f"; over the {common} steps both logged: smoltune{dnf(ours)}, unsloth{dnf(unsloth)}"
    return line
