"""Prepare .whl/ for the GPU check: the wheels the GPU image lacks (bench/gpu_check.py NEEDED, at this
environment's versions, built for the GPU machine's Python 3.12), split into parts under PART_MIB each (one
`run` call carries at most 64 MiB), and SmolLM2-135M's config and tokenizer in .whl/model.

    make gpu-wheels        # needs PyPI; about 90 MB to download
"""

from __future__ import annotations

import importlib.metadata as metadata
import shutil
import subprocess
import sys
from pathlib import Path

import gpu_check

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def download(name: str, target: Path) -> None:
    version = metadata.version(name.replace("_", "-"))
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(target), f"{name}=={version}"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command, check=True)


def main() -> None:
    from smoltune.model import resolve_model

    staging = gpu_check.WHEELS / "all"
    staging.mkdir(parents=True, exist_ok=True)
    for name in gpu_check.NEEDED:
        if not any(staging.glob(f"{name}-*.whl")):
            download(name, staging)
    part, size = 1, 0
    for wheel in sorted(staging.glob("*.whl"), key=lambda w: -w.stat().st_size):
        mib = wheel.stat().st_size / 2**20
        if size + mib > gpu_check.PART_MIB:
            part, size = part + 1, 0
        (gpu_check.WHEELS / str(part)).mkdir(exist_ok=True)
        shutil.move(str(wheel), gpu_check.WHEELS / str(part) / wheel.name)
        size += mib
    staging.rmdir()
    model = Path(resolve_model("embedded").path)
    (gpu_check.WHEELS / "model").mkdir(exist_ok=True)
    for file in model.iterdir():
        if file.suffix in (".json", ".txt", ".jinja") and "safetensors" not in file.name:
            shutil.copy(file, gpu_check.WHEELS / "model" / file.name)
    for folder in sorted(gpu_check.WHEELS.iterdir()):
        total = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"{folder}: {total:.1f} MiB ({len(list(folder.iterdir()))} files)")


if __name__ == "__main__":
    main()
