"""The GPU check: everything only a CUDA GPU can show, in one script, for a GPU machine with no network.

    make gpu-wheels                  # here: what the GPU machine lacks, in .whl/ (one carry of <= 60 MiB)
    make gpu-check DRY=1             # here: the plan, its limits, and whether .whl/ is complete and fits one carry
    make gpu-check OUT=/some/folder  # there, in one call carrying .whl: installs, runs the plan, writes 2 files

Two stages, every step with its own limit (process groups killed when it is up), all within DEADLINE_S so the
check ends inside one device call:
- quick (<= QUICK_S): versions, the card's compute capability and the precision rule, import times
  (bench/gpu_probe.py); 5 steps of the seed job per backend (hf, Unsloth); the packed-attention kernels' equality
  test. Its JSON is written to OUT before the long stage starts, so a call cut short still returns it.
- long: the `gpu` tests; the seed job's training (60 steps) and evaluation in bf16 and in forced fp16 (the seed's
  T4 path); Unsloth against smoltune (bench/run.py); LoRA r=256 and full fine-tuning; the hf backend's packed
  rows attended row by row and by flex_attention.

Everything the steps write stays under WORK (/tmp); into OUT go only gpu-check.json and gpu-check.log (the log's
last LOG_TAIL_BYTES), as a device call returns only a few small files. It runs the library's entry points, not
Prefect (Prefect and its server do not travel well as wheels).

The seed weights (a 98 MB GGUF) do not fit one carry, so on a machine without them the check builds a model with
SmolLM2-135M's configuration and tokenizer (carried in .whl/model) and random weights: speed and memory figures
are those of the seed model's shapes; losses only compare precisions and trainers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".whl"  # wheels/ and model/, carried together: `carry: [".whl"]`
# What the GPU image lacks (the device library's KINDS.md lists its packages) of what training and evaluation
# import; and peft and typing_extensions at this project's versions (the image's are unknown, and pydantic and
# Unsloth need recent ones).
NEEDED = (
    "trl", "datasets", "dill", "multiprocess", "unsloth", "unsloth_zoo", "pydantic", "pydantic_core",
    "annotated_types", "typing_inspection", "tyro", "cut_cross_entropy", "msgspec", "torchao", "bitsandbytes",
    "docstring_parser", "typeguard", "peft", "typing_extensions",
)  # fmt: skip
CARRY_MIB = 60  # one call carries at most 64 MiB with the working tree (under 1 MiB)
WORK = Path("/tmp/gpu-check")
QUICK_S = 180
DEADLINE_S = 480  # the whole plan; with the install it fits one device call (10 minutes at most)
LOG_TAIL_BYTES = 512 * 1024
HF = ["--set", "train.backend=hf", "--set"]
FIVE_STEPS = ["--set", "train.max_steps=5", "--set", "train.warmup_steps=1", "--set", "data.eval_samples=8"]

Step = tuple[str, list[str], int]


def plan(work: Path, model: str) -> tuple[list[Step], list[Step]]:
    """(quick steps, long steps): (name, command, timeout seconds) each."""
    py = [sys.executable]
    job = [*py, str(ROOT / "bench" / "gpu_job.py"), "--model", model, "--out", str(work)]
    bench = [*py, "bench/run.py", "--model", model, "--contenders", "unsloth,smoltune", "--datasets", "seed"]
    bench += ["--out", str(work / "bench.json")]
    # -v: a step cut at its limit still names the tests that ran; the kernels' equality runs in the quick stage.
    gpu_tests = [*py, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "gpu", "tests/train/test_gpu.py"]
    quick = [
        ("versions, card, precision rule, imports", [*py, str(ROOT / "bench" / "gpu_probe.py"), str(work)], 30),
        ("5 steps, hf", [*job, "--name", "quick-hf", *FIVE_STEPS, "--set", "train.backend=hf"], 40),
        ("5 steps, unsloth", [*job, "--name", "quick-unsloth", *FIVE_STEPS, "--set", "train.backend=unsloth"], 60),
        ("packed-attention kernels agree", [*gpu_tests, "-k", "kernel"], 45),
    ]
    long = [
        ("seed job, bf16", [*job, "--name", "seed-bf16", "--set", "train.precision=bf16"], 50),
        ("seed job, forced fp16", [*job, "--name", "seed-fp16", "--set", "train.precision=fp16"], 50),
        ("bench: unsloth vs smoltune, seed rows", bench, 60),
        # smoltune's own fast path on CUDA: packed rows by one call per row (auto without flash-attn) vs
        # flex_attention, whose torch.compile time is inside the training time (smoltune.train.segment_kernels).
        ("seed job, hf, per-row attention", [*job, "--name", "hf-rows", *HF, "train.speed.segment_kernel=rows"], 35),
        ("seed job, hf, flex attention", [*job, "--name", "hf-flex", *HF, "train.speed.segment_kernel=flex"], 35),
        ("gpu tests", [*gpu_tests, "-k", "not kernel"], 70),  # last: the longest, its kernel tests already ran
    ]
    return quick, long


def wheel_names() -> dict[str, Path]:
    """Normalised distribution name -> wheel file, anywhere under .whl/."""
    return {w.name.split("-")[0].lower().replace("-", "_"): w for w in sorted(WHEELS.glob("**/*.whl"))}


def missing_wheels() -> list[str]:
    present = wheel_names()
    return [name for name in NEEDED if name not in present]


def carry_mib(folder: Path | None = None) -> float:
    return sum(f.stat().st_size for f in (folder or WHEELS).glob("**/*") if f.is_file()) / 2**20


def carry_problems() -> list[str]:
    """Why .whl/ cannot make the check's one carry (empty when it can)."""
    problems = []
    if missing := missing_wheels():
        problems.append(f".whl/ lacks {', '.join(missing)}: run `make gpu-wheels` (needs PyPI)")
    if not (WHEELS / "model" / "config.json").is_file():
        problems.append(".whl/model lacks SmolLM2-135M's config and tokenizer: run `make gpu-wheels`")
    if (size := carry_mib()) > CARRY_MIB:
        problems.append(
            f".whl/ holds {size:.1f} MiB, over the {CARRY_MIB} MiB one call carries: rerun `make gpu-wheels`"
        )
    return problems


def install() -> dict[str, str]:
    """Install the carried wheels into /tmp/site; the environment to run with."""
    site = "/tmp/site"
    wheels = [str(w) for w in wheel_names().values()]
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    subprocess.run([*command, "--upgrade", "--target", site, *wheels], check=True, capture_output=True, text=True)
    path = os.pathsep.join(p for p in (site, str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def run_step(command: list[str], env: dict, log: Any, limit: int) -> str:
    """Run one step in its own process group; when its limit is up the whole group is killed (a trainer's
    workers, torchrun's ranks), so nothing of it runs on into the next step's timing."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"timed out after {limit} s"
    return "passed" if code == 0 else f"failed ({code})"


def run_plan(steps: list[Step], env: dict, log: Any, deadline: float = DEADLINE_S, begun: float | None = None) -> list:
    """Run each step in turn, its output into `log`; each within its own limit and all within `deadline` seconds
    of `begun` (a step that would outlast it is cut, the ones after it are not started)."""
    records = []
    begun = time.perf_counter() if begun is None else begun
    for name, command, limit in steps:
        started = time.perf_counter()
        limit = min(limit, int(deadline - (started - begun)))
        status = run_step(command, env, log, limit) if limit > 0 else f"not started: {deadline} s are up"
        records.append({"step": name, "status": status, "seconds": round(time.perf_counter() - started)})
        print(f"{name}: {status}", flush=True)
    return records


def publish(results: dict, work: Path, out: Path) -> None:
    """OUT gets two small files: the results with every job's record, and the log's tail."""
    results["jobs"] = [json.loads(path.read_text()) for path in sorted(work.glob("job-*.json"))]
    if (probe := work / "probe.json").is_file():
        results["probe"] = json.loads(probe.read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.json").write_text(json.dumps(results, indent=2))
    log = (work / "gpu-check.log").read_bytes() if (work / "gpu-check.log").is_file() else b""
    (out / "gpu-check.log").write_bytes(log[-LOG_TAIL_BYTES:])


def run_check(quick: list[Step], long: list[Step], env: dict, work: Path, out: Path, about: dict) -> dict:
    """Both stages, publishing after each: the quick stage's figures are in OUT before the long stage starts."""
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {**about, "stage": "quick", "steps": []}
    begun = time.perf_counter()
    with (work / "gpu-check.log").open("w") as log:
        results["steps"] = run_plan(quick, env, log, deadline=min(QUICK_S, DEADLINE_S), begun=begun)
        publish(results, work, out)
        results["steps"] += run_plan(long, env, log, deadline=DEADLINE_S, begun=begun)
    results["stage"] = "done"
    publish(results, work, out)
    return results


def dry_run(quick: list[Step], long: list[Step]) -> None:
    for stage, steps in (("quick", quick), ("long", long)):
        for name, command, limit in steps:
            print(f"[{stage}] {name} (<= {limit} s): {' '.join(command)}")
    first, total = sum(limit for _, _, limit in quick), sum(limit for _, _, limit in quick + long)
    print(f"quick stage limits {first} s (<= {QUICK_S}); all {total} s, cut at {DEADLINE_S} s")
    if problems := carry_problems():
        sys.exit("gpu-check: " + "; ".join(problems))
    print(f"carry: .whl/ holds all {len(NEEDED)} wheels and the model files, {carry_mib():.1f} MiB (<= {CARRY_MIB})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="list the plan and check the carry; run nothing")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-check", help="where the 2 files go")
    parser.add_argument("--model", default="auto", help="a model folder; auto: embedded if present, else the twin")
    args = parser.parse_args()
    if args.dry:
        return dry_run(*plan(WORK, args.model))
    if problems := carry_problems():
        sys.exit("gpu-check: refusing to start: " + "; ".join(problems))
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu-check: no CUDA GPU here; `make gpu-check DRY=1` shows the plan")
    about = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    try:
        env = install()
        quick, long = plan(WORK, model_folder(args.model, env))
        run_check(quick, long, env, WORK, Path(args.out), about)
    except (subprocess.CalledProcessError, OSError) as err:
        # Whatever failed outside a step (the install, finding the model), OUT still says what, with its output.
        WORK.mkdir(parents=True, exist_ok=True)
        with (WORK / "gpu-check.log").open("a") as log:
            log.write(f"\n{err}\n{getattr(err, 'stdout', None) or ''}{getattr(err, 'stderr', None) or ''}")
        publish({**about, "stage": "failed", "error": str(err)}, WORK, Path(args.out))
        raise
    print(f"results in {Path(args.out) / 'gpu-check.json'}")


def model_folder(choice: str, env: dict) -> str:
    """The model every step uses, resolved once with the carried packages importable: a folder, not 'auto'."""
    found = subprocess.run(
        [sys.executable, "-c", f"import gpu_job; print(gpu_job.model_folder({choice!r})[0])"],
        cwd=ROOT / "bench", env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return found.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    main()
