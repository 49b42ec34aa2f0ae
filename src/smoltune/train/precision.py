"""Training precision: `train.precision` (auto | fp32 | bf16 | fp16), one rule for both backends and evaluation.

    python -m smoltune.train.precision MODEL_DIR      # what `auto` picks on this machine, with its figures

`auto` on CUDA follows the card: bf16 at compute capability 8.0 or newer (A100, A10G, L4, H100, H200), else fp16
with loss scaling (the seed's Colab T4, V100), by `smoltune.machine.has_bf16` (not
`torch.cuda.is_bf16_supported()`, which counts emulation and says yes on a T4); a forced bf16 there is refused.
`auto` on a CPU measures: CPUs differ by 7x in bf16 matmul speed (native AMX or AVX512-BF16 units vs emulation on
AVX2-only parts), so a constant is wrong on some machine. It times matmuls at the model's own shapes in fp32 and
bf16 (about a second, once per machine: cached under $SMOLTUNE_HOME by CPU, flags, torch version, threads and
shapes) and picks bf16 only when it beats fp32 by BF16_MARGIN, because the rest of a step (casts, norms, optimizer)
does not speed up. fp16 is never picked on a CPU: no CPU this project has met has fast fp16 matmuls, and
transformers' fp16 loss scaling needs CUDA.

A training keeps one precision from its first start to its end: the choice is stored in its work folder
(STORED_FILE) when it starts, and a rerun there (resuming from its last checkpoint after a crash or SIGKILL) uses
it again instead of measuring anew; a measurement on a busy machine may pick otherwise, and the optimizer state and
logged losses of the steps already taken belong to the first choice.

Whatever the precision, LoRA keeps the frozen base weights in it (no per-step casts) while the adapter weights,
their gradients and the optimizer state stay fp32 (PEFT upcasts adapters); full fine-tuning keeps fp32 master
weights under autocast (pure 16-bit weights lose small updates).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from smoltune.errors import ConfigError
from smoltune.machine import card_name, cuda_capability, has_bf16

Name = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, Literal["float32", "bfloat16", "float16"]] = {
    "fp32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
}
# bf16 must beat fp32 matmuls by this factor before a CPU trains in it: the matmuls are ~80% of a step's time.
BF16_MARGIN = 1.25
STORED_FILE = "precision.json"  # in a training's work folder: the precision it started in


@dataclass(frozen=True)
class Precision:
    name: Name  # the compute precision
    load_dtype: Literal["float32", "bfloat16", "float16"]  # how the model's weights are loaded
    bf16: bool  # TrainingArguments.bf16: bf16 autocast
    fp16: bool  # TrainingArguments.fp16: fp16 autocast with loss scaling
    reason: str
    gflops: dict[str, float] = field(default_factory=dict)  # measured matmul rate per precision, when measured

    @property
    def autocast_dtype(self) -> str | None:
        """The torch dtype name autocast runs in, None for fp32."""
        return None if self.name == "fp32" else DTYPES[self.name]


FP32 = Precision("fp32", "float32", False, False, "fp32")


def precision_for(
    device: str,
    mode: str,
    capability: tuple[int, int] | None,
    requested: str = "auto",
    gflops: dict[str, float] | None = None,
) -> Precision:
    """The precision for training `mode` ('lora' or 'full') on `device`. Pure: every device is testable here.
    `capability` is the card's compute capability (CUDA only); `gflops` the CPU's measured matmul rates."""
    gflops = gflops or {}
    bf16_supported = capability is not None and has_bf16(capability)
    if requested != "auto":
        if device == "cuda" and requested == "bf16" and not bf16_supported:
            card = card_name(capability) if capability else "unknown card"
            raise ConfigError(
                [
                    f"train.precision=bf16: this GPU ({card}) has no bf16 units, which need 8.0 or newer "
                    "(A100, A10G, L4, H100); use fp16 (loss scaling) or auto"
                ]
            )
        if device != "cuda" and requested == "fp16":
            raise ConfigError(["train.precision=fp16 needs a CUDA GPU (loss scaling); on a CPU use auto, bf16 or fp32"])
        return _build(requested, mode, "set by train.precision", gflops)
    if device == "cuda":
        if bf16_supported:
            return _build("bf16", mode, "auto on CUDA with bf16", gflops)
        card = card_name(capability) if capability else "unknown card"
        return _build("fp16", mode, f"auto on CUDA without bf16 ({card}): fp16 with loss scaling", gflops)
    fp32, bf16 = gflops.get("fp32"), gflops.get("bf16")
    if fp32 and bf16 and bf16 >= BF16_MARGIN * fp32:
        return _build("bf16", mode, f"auto on CPU: bf16 matmuls {bf16 / fp32:.1f}x fp32 here", gflops)
    if fp32 and bf16:
        return _build("fp32", mode, f"auto on CPU: bf16 matmuls only {bf16 / fp32:.2f}x fp32 here", gflops)
    return _build("fp32", mode, "auto on CPU: fp32 (not measured)", gflops)


def _build(name: str, mode: str, why: str, gflops: dict[str, float]) -> Precision:
    if name == "fp32":
        return Precision("fp32", "float32", False, False, f"{why}: fp32", gflops)
    master = mode == "full"
    load = "float32" if master else DTYPES[name]
    kept = "fp32 master weights" if master else f"frozen base in {name}, adapters fp32"
    return Precision(name, load, name == "bf16", name == "fp16", f"{why}: {name} autocast, {kept}", gflops)  # type: ignore[arg-type]


def matmul_shapes(model_path: str | Path) -> list[tuple[int, int]]:
    """(in, out) features of the model's projections, read from its config.json (no weights loaded)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
        hidden, inner = int(config["hidden_size"]), int(config["intermediate_size"])
    except (OSError, KeyError, ValueError, TypeError):
        hidden, inner = 576, 1536  # SmolLM2-135M's; only the speed ratio is used, not the shapes themselves
    return [(hidden, hidden), (hidden, inner), (inner, hidden)]


def measure_gflops(shapes: list[tuple[int, int]], dtypes: tuple[str, ...] = ("fp32", "bf16"), tokens: int = 1024):
    """Sustained GFLOP/s of (tokens x in) @ (in x out) matmuls per precision, the projections of one layer in
    turn, over about 0.25 s per precision with torch's threads."""
    import torch

    rates: dict[str, float] = {}
    for name in dtypes:
        dtype = getattr(torch, DTYPES[name])
        mats = [(torch.randn(tokens, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for k, n in shapes]
        flops_per_round = sum(2 * tokens * k * n for k, n in shapes)
        for a, b in mats:  # warm up threads and caches
            a @ b
        rounds, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < 0.25 or rounds < 2:
            for a, b in mats:
                a @ b
            rounds += 1
        rates[name] = round(flops_per_round * rounds / elapsed / 1e9, 1)
    return rates


def _machine_key(shapes: list[tuple[int, int]]) -> str:
    from smoltune.machine import machine_key

    return f"{machine_key()} | shapes {shapes}"


def cpu_matmul_gflops(model_path: str | Path) -> dict[str, float]:
    """This machine's fp32 and bf16 matmul rates at the model's shapes, measured once and cached per machine.
    A measurement taken while other processes kept the CPUs busy is used for this run only, never cached (a busy
    machine once cached bf16 as 3x fp32 where bf16 is emulated); entries cached without that check are
    measured again."""
    from smoltune.files import smoltune_home
    from smoltune.machine import measured_once

    shapes = matmul_shapes(model_path)
    cache = smoltune_home() / "precision.json"
    return measured_once(
        cache, _machine_key(shapes), lambda: measure_gflops(shapes), _rates, "matmul speed", field="rates"
    )


def _rates(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(name), int | float) for name in ("fp32", "bf16"))


def resolve_precision(
    device: str, mode: str, requested: str, model_path: str | Path, work_dir: str | Path | None = None
) -> Precision:
    """`train.precision` resolved on this device (measuring the CPU when `auto` needs to). With `work_dir`, a
    training's work folder: the precision a training there started in, else the one resolved now, stored there."""
    if work_dir is not None and (stored := stored_precision(Path(work_dir), device, mode, requested)) is not None:
        return stored
    if device == "cuda":
        chosen = precision_for(device, mode, cuda_capability(), requested)
    else:
        gflops = cpu_matmul_gflops(model_path) if requested == "auto" else {}
        chosen = precision_for(device, mode, None, requested, gflops)
    if work_dir is not None:
        store_precision(Path(work_dir), chosen, device, mode, requested)
    return chosen


def _asked(device: str, mode: str, requested: str) -> dict[str, str]:
    """What a stored choice holds for: a resumed training on another card or CPU kind resolves again (the checks
    of `precision_for`, e.g. no bf16 below compute capability 8.0, must run for the hardware it trains on)."""
    from smoltune.machine import cpu_kind

    hardware = f"cuda {cuda_capability()}" if device == "cuda" else cpu_kind()
    return {"device": device, "hardware": hardware, "mode": mode, "requested": requested}


def store_precision(work_dir: Path, chosen: Precision, device: str, mode: str, requested: str) -> None:
    """Keep `chosen` in the training's work folder, with what it was resolved for."""
    from smoltune.files import atomic_write_json

    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work_dir / STORED_FILE, {"for": _asked(device, mode, requested), "precision": asdict(chosen)})


def stored_precision(work_dir: Path, device: str, mode: str, requested: str) -> Precision | None:
    """The precision a training in `work_dir` started in, if it was resolved for the same device, mode and
    `train.precision`; None when there is none (a first start) or it cannot be read (resolved again then)."""
    path = work_dir / STORED_FILE
    try:
        stored = json.loads(path.read_text())
        kept = Precision(**stored["precision"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if stored.get("for") != _asked(device, mode, requested) or kept.name not in DTYPES:
        return None
    print(
        f"smoltune: resuming in {kept.name}, the precision this training started in ({path}): not measured again",
        file=sys.stderr,
    )
    return kept


def main() -> None:
    from smoltune.model import pick_device

    model_path = sys.argv[1] if len(sys.argv) > 1 else "."
    chosen = resolve_precision(pick_device(), "lora", "auto", model_path)
    print(json.dumps({"precision": chosen.name, "reason": chosen.reason, "gflops": chosen.gflops}))


if __name__ == "__main__":
    main()
