"""Log-prob scoring through the server against the harness loading the model itself: lm-evaluation-harness
scores a 200-choice multiple-choice task (50 built-in questions x 4 answers, written by this project) with

  - `local-completions` through `smoltune serve` (the server already up, as an evaluation team runs it; the
    harness's own concurrency, `--concurrent` requests in flight, so the server batches them), and
  - its `hf` model loading the same base + adapter with PEFT (`peft=`, fp32, `--batch-size`), load included:
    that is what the harness costs a user who does not have a server.

    make bench-serve                      # after serve_bench.py; run it on an idle machine
    python bench/serve_scoring.py [--questions 50] [--concurrent 8] [--batch-size 8]

The goal (issue 24): through the server within 1.5x the harness's own time. Writes runs/bench/serve_scoring.json
with the machine's name, and checks the two give the same log-likelihoods (within 1e-2).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path

from serve_bench import make_adapters, start_server
from verdicts import machine_label

ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.5  # server time / harness time
TASK = """task: smoltune_bench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=50, help="questions of 4 choices each")
    parser.add_argument("--concurrent", type=int, default=8, help="local-completions requests in flight")
    parser.add_argument("--batch-size", type=int, default=8, help="the hf model's batch size")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "serve_scoring.json"))
    return parser.parse_args()


def write_task(folder: Path, questions: int) -> Path:
    """Addition questions with the right sum and three near misses, from this project's own generator."""
    rows = []
    for i in range(questions):
        a, b = 17 + 7 * i, 5 + 3 * i
        choices = [str(a + b + d) for d in (0, 1, -1, 10)]
        shift = i % 4
        rows.append({"question": f"What is {a} + {b}?\nAnswer:", "choices": [f" {c}" for c in choices[shift:] +
                     choices[:shift]], "answer": (4 - shift) % 4})  # fmt: skip
    data = folder / "smoltune_bench_mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "smoltune_bench_mc.yaml").write_text(TASK.format(data=data))
    return folder


def score(lm: object, tasks: Path) -> list[float]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model=lm, tasks=["smoltune_bench_mc"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True
    )
    samples = sorted(results["samples"]["smoltune_bench_mc"], key=lambda s: s["doc_id"])
    return [float(resp[0][0]) for sample in samples for resp in sample["resps"]]


def through_server(url: str, base: str, tasks: Path, concurrent: int) -> tuple[float, list[float]]:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    started = time.perf_counter()
    lm = LocalCompletionsAPI(
        base_url=f"{url}/v1/completions", model="first", tokenizer_backend="huggingface", tokenizer=base,
        num_concurrent=concurrent, max_length=2048,
    )  # fmt: skip
    values = score(lm, tasks)
    return time.perf_counter() - started, values


def in_harness(base: str, adapter: str, tasks: Path, batch_size: int) -> tuple[float, list[float]]:
    from lm_eval.models.huggingface import HFLM

    started = time.perf_counter()
    lm = HFLM(pretrained=base, peft=adapter, dtype="float32", device="cpu", batch_size=batch_size)
    values = score(lm, tasks)
    return time.perf_counter() - started, values


def main() -> None:
    from smoltune.model import resolve_model

    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-scoring-"))
    tasks = write_task(work, args.questions)
    base = resolve_model("embedded").path
    adapters = make_adapters(work)
    proc, url = start_server(adapters)
    try:
        os.environ.setdefault("OPENAI_API_KEY", os.environ.get("SMOLTUNE_API_KEY", "none"))
        server_s, remote = through_server(url, base, tasks, args.concurrent)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    harness_s, local = in_harness(base, adapters["first"], tasks, args.batch_size)
    figures = {
        "machine": machine_label(),
        "choices": len(local),
        "server": {"seconds": round(server_s, 1), "num_concurrent": args.concurrent},
        "harness_hf": {"seconds": round(harness_s, 1), "batch_size": args.batch_size, "includes_loading": True},
        "max_abs_difference": round(max(abs(a - b) for a, b in zip(remote, local, strict=True)), 5),
        "goal": {"ratio": round(server_s / harness_s, 2), "at_most": GOAL, "met": server_s / harness_s <= GOAL},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
