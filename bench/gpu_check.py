"""The GPU check: everything only a CUDA GPU can show, in one script, for a GPU machine with no network.

    make gpu-wheels                  # here: the wheels the GPU machine lacks, into .whl/1, .whl/2 (under 60 MiB each)
    make gpu-check DRY=1             # here: the plan, and whether .whl/ holds every wheel it needs
    make gpu-check OUT=/some/folder  # there: installs from .whl/, runs the plan, writes gpu-check.json + .log
    python3 bench/gpu_check.py --install-only   # there, first call: install the part carried in it

The plan (not yet run on a GPU; every step has a time limit, the whole check stops at DEADLINE_S): the `gpu`
tests; the seed job's training (60 steps) and evaluation in bf16 and in forced fp16 (the seed's T4 path); LoRA
r=16, r=256 and full fine-tuning; the hf backend's packed rows by per-row attention and by flex_attention
(smoltune.train.segment_kernels); and the bench's GPU columns, Unsloth against smoltune on both
datasets. It runs the library's entry points, not Prefect (Prefect
and its server do not travel well as wheels).

The seed weights (a 98 MB GGUF) do not fit the 64 MiB a call may carry, so on a machine without them the check
builds a model with SmolLM2-135M's configuration and tokenizer (carried in .whl/model, 3 MB) and random weights:
speed and memory figures are those of the seed model's shapes; losses only compare precisions and trainers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".whl"
# What the GPU image lacks (device/KINDS.md lists its packages) of what training and evaluation import.
NEEDED = (
    "trl", "datasets", "dill", "multiprocess", "unsloth", "unsloth_zoo", "pydantic", "pydantic_core",
    "annotated_types", "typing_inspection", "tyro", "cut_cross_entropy", "msgspec", "torchao", "bitsandbytes",
    "docstring_parser", "typeguard",
)  # fmt: skip
PART_MIB = 60
HF = ["--set", "train.backend=hf", "--set"]
# The plan's steps stop being started (and a running one is cut) at this many seconds.
DEADLINE_S = 480  # the whole plan's time budget: it must fit in one device call


def plan(out: Path, model: str) -> list[tuple[str, list[str], int]]:
    """(name, command, timeout seconds) of every step."""
    py = [sys.executable]
    job = [*py, str(ROOT / "bench" / "gpu_job.py"), "--model", model, "--out", str(out)]
    bench = [
        *py,
        "bench/run.py",
        "--model",
        model,
        "--contenders",
        "unsloth,smoltune",
        "--out",
        str(out / "bench.json"),
    ]
    return [
        ("gpu tests", [*py, "-m", "pytest", "-q", "-m", "gpu", "tests/train/test_gpu.py"], 150),
        ("seed job, bf16", [*job, "--name", "seed-bf16", "--set", "train.precision=bf16"], 60),
        ("seed job, forced fp16", [*job, "--name", "seed-fp16", "--set", "train.precision=fp16"], 60),
        ("bench: unsloth vs smoltune", bench, 120),
        ("LoRA r=256", [*job, "--name", "lora-r256", "--set", "train.lora.r=256", "--set", "train.lora.alpha=256"], 60),
        ("full fine-tuning", [*job, "--name", "full", "--set", "train.mode=full"], 60),
        # smoltune's own fast path on CUDA: packed rows by one call per row (auto without flash-attn) vs
        # flex_attention, whose torch.compile time is inside the training time (smoltune.train.segment_kernels).
        ("seed job, hf, per-row attention", [*job, "--name", "hf-rows", *HF, "train.speed.segment_kernel=rows"], 90),
        ("seed job, hf, flex attention", [*job, "--name", "hf-flex", *HF, "train.speed.segment_kernel=flex"], 90),
    ]


def wheel_names() -> dict[str, Path]:
    """Normalised distribution name -> wheel file, over .whl/ and its numbered parts."""
    found = {}
    for wheel in sorted(WHEELS.glob("**/*.whl")):
        found[wheel.name.split("-")[0].lower().replace("-", "_")] = wheel
    return found


def missing_wheels() -> list[str]:
    present = wheel_names()
    return [name for name in NEEDED if name not in present]


def install() -> dict[str, str]:
    """Install the carried wheels into /tmp/site (kept while the machine stays warm); the environment to run with."""
    site = "/tmp/site"
    wheels = [str(w) for w in wheel_names().values()]
    if wheels:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        subprocess.run([*command, "--upgrade", "--target", site, *wheels], check=True)
    path = os.pathsep.join(p for p in (site, str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def run_plan(steps: list[tuple[str, list[str], int]], env: dict, log: Any, deadline: float = DEADLINE_S) -> list[dict]:
    """Run each step in turn, its output into `log`; each within its own limit and all within `deadline` seconds
    (a step that would outlast it is cut, the ones after it are not started, so the check ends inside one call)."""
    records = []
    begun = time.perf_counter()
    for name, command, limit in steps:
        started = time.perf_counter()
        limit = min(limit, int(deadline - (started - begun)))
        try:
            if limit <= 0:
                raise subprocess.TimeoutExpired(command, 0)
            done = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
            status = "passed" if done.returncode == 0 else f"failed ({done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit} s" if limit > 0 else f"not started: {deadline} s are up"
        records.append({"step": name, "status": status, "seconds": round(time.perf_counter() - started)})
        print(f"{name}: {status}", flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="list the plan and check the wheels; run nothing")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-check", help="results folder")
    parser.add_argument("--model", default="auto", help="a model folder; auto: embedded if present, else the twin")
    parser.add_argument("--install-only", action="store_true", help="install the carried wheels and stop")
    args = parser.parse_args()
    out = Path(args.out)
    steps = plan(out, args.model)
    missing = missing_wheels()
    if args.dry:
        for name, command, limit in steps:
            print(f"{name} (<= {limit} s): {' '.join(command)}")
        print(f"total limit {sum(limit for _, _, limit in steps)} s, the whole check cut at {DEADLINE_S} s")
        if missing:
            sys.exit(f"gpu-check: .whl/ lacks {', '.join(missing)}: run `make gpu-wheels` (needs PyPI)")
        print(f"wheels: all {len(NEEDED)} present in .whl/")
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu-check: no CUDA GPU here; `make gpu-check DRY=1` shows the plan")
    out.mkdir(parents=True, exist_ok=True)
    env = install()
    if args.install_only:
        print(f"installed {len(wheel_names())} wheels into /tmp/site")
        return
    # The model every step uses, resolved once (with the carried packages importable): a folder, not 'auto'.
    found = subprocess.run(
        [sys.executable, "-c", f"import gpu_job; print(gpu_job.model_folder({args.model!r})[0])"],
        cwd=ROOT / "bench", env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    steps = plan(out, found.stdout.strip().splitlines()[-1])
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": []}
    with (out / "gpu-check.log").open("w") as log:
        results["steps"] = run_plan(steps, env, log)
    jobs = sorted(out.glob("job-*.json"))
    results["jobs"] = [json.loads(path.read_text()) for path in jobs]
    (out / "gpu-check.json").write_text(json.dumps(results, indent=2))
    print(f"results in {out / 'gpu-check.json'}")


if __name__ == "__main__":
    main()
