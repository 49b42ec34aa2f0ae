"""The GPU check's first step (bench/gpu_check.py): what this machine is, before anything trains.

    python bench/gpu_probe.py /tmp/gpu-check      # writes probe.json there and prints it

Versions of the stack, the card and its compute capability, what smoltune's precision rule picks on it (auto
and forced bf16), and how long each library takes to import (Unsloth's import alone has taken tens of seconds).
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import json
import sys
import time
from pathlib import Path

LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "unsloth")
VERSIONS_ONLY = ("typing_extensions", "pydantic", "bitsandbytes", "triton", "flash_attn")


def import_seconds(name: str) -> float | str:
    started = time.perf_counter()
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - a library that fails to import is a finding, not a crash
        return f"failed: {type(err).__name__}: {err}"[:300]
    return round(time.perf_counter() - started, 2)


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def precision_rule() -> dict:
    """What `train.precision` resolves to on this card, by smoltune's rule (never torch's is_bf16_supported)."""
    from smoltune.errors import ConfigError
    from smoltune.machine import cuda_capability, has_bf16
    from smoltune.train.precision import precision_for

    capability = cuda_capability()
    try:
        forced = precision_for("cuda", "lora", capability, "bf16").name
    except ConfigError as err:
        forced = f"refused: {err}"
    return {
        "capability": list(capability),
        "has_bf16": has_bf16(capability),
        "auto": precision_for("cuda", "lora", capability).reason,
        "forced_bf16": forced,
    }


def main() -> None:
    import torch  # first: its import time is everyone's

    probe = {
        "python": sys.version.split()[0],
        "versions": {name: version(name) for name in (*LIBRARIES, *VERSIONS_ONLY)},
        "cuda": torch.version.cuda,
        "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "import_seconds": {name: import_seconds(name) for name in LIBRARIES[1:]},
        "precision": precision_rule() if torch.cuda.is_available() else None,
    }
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    work.mkdir(parents=True, exist_ok=True)
    (work / "probe.json").write_text(json.dumps(probe, indent=2))
    print(json.dumps(probe))


if __name__ == "__main__":
    main()
