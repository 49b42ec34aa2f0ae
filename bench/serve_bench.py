"""Serving speed on this machine: the embedded SmolLM2 with 2 adapters behind `smoltune serve`.

    make bench-serve                      # about 5 minutes on 2 cores
    python bench/serve_bench.py --tokens 32

Trains two small adapters (5 steps each, on two halves of the built-in rows: their weights differ, which is
all the speed measurement needs), starts the real server in its own process on a free port, and measures with
the `openai` client: time to first token and tokens/s of 1 stream and of 8 concurrent streams, and the
throughput of 8 mixed-adapter greedy requests sent at once (batched by the server) against the same 8 sent
one at a time. Writes runs/bench/serve.json and prints a table with the machine's name.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from verdicts import machine_label

ROOT = Path(__file__).resolve().parent.parent
BATCH_GOAL = 3.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "serve.json"))
    return parser.parse_args()


def train_adapters(work: Path) -> dict[str, str]:
    from smoltune.config import DataConfig, TrainConfig
    from smoltune.data.stage import load_rows, prepare_dataset
    from smoltune.files import write_jsonl
    from smoltune.model import resolve_model
    from smoltune.pipeline.slots import machine_slot
    from smoltune.train.runner import train_in_subprocess
    from smoltune.train.spec import TrainSpec

    model = resolve_model("embedded")
    rows = [r for r in load_rows(DataConfig()) if r.get("split") != "test"]
    adapters = {}
    for index, name in enumerate(("first", "second")):
        raw = write_jsonl(work / f"{name}.jsonl", rows[index::2][:200])
        prepared = prepare_dataset(raw, DataConfig(num_samples=40, eval_samples=4), work / name)
        config = TrainConfig(max_steps=5, warmup_steps=1).model_dump(mode="json")
        spec = TrainSpec(model.path, prepared.train_file, str(work / name / "train"), config)
        # This machine's training slot, as a pipeline run takes it: never beside another training.
        result = train_in_subprocess(spec, slot=machine_slot())
        adapters[name] = result.output_dir
    return adapters


def start_server(adapters: dict[str, str]) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cli = str(Path(sys.executable).parent / "smoltune")
    args = [cli, "serve", "--port", str(port), *[a for n, p in adapters.items() for a in ("--adapter", f"{n}={p}")]]
    proc = subprocess.Popen(args, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def one_stream(client: object, model: str, prompt: str, tokens: int, count: object) -> dict:
    """Time to first token and the streamed answer's length in tokens (SSE pieces are words, not tokens)."""
    started = time.perf_counter()
    first, text = None, ""
    stream = client.chat.completions.create(  # type: ignore[attr-defined]
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=tokens, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text += chunk.choices[0].delta.content
    done = time.perf_counter()
    return {"ttft_s": (first or done) - started, "seconds": done - started, "tokens": count(text)}  # type: ignore[operator]


def one_request(client: object, model: str, prompt: str, tokens: int) -> int:
    reply = client.chat.completions.create(  # type: ignore[attr-defined]
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0
    )
    return reply.usage.completion_tokens


def measure(url: str, tokens: int) -> dict:
    from openai import OpenAI
    from transformers import AutoTokenizer

    from smoltune.model import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded").path)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    prompts = [f"Write a sentence about the number {i}." for i in range(8)]
    models = ["first", "second"] * 4
    one_request(client, "first", "warm up", 4)
    single = one_stream(client, "first", prompts[0], tokens, count)
    with ThreadPoolExecutor(8) as pool:
        started = time.perf_counter()
        streams = list(pool.map(lambda i: one_stream(client, models[i], prompts[i], tokens, count), range(8)))
        streams_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sequential_tokens = sum(one_request(client, m, p, tokens) for m, p in zip(models, prompts, strict=True))
    sequential_seconds = time.perf_counter() - started
    with ThreadPoolExecutor(8) as pool:
        started = time.perf_counter()
        batched_tokens = sum(pool.map(lambda i: one_request(client, models[i], prompts[i], tokens), range(8)))
        batched_seconds = time.perf_counter() - started
    sequential_rate, batched_rate = sequential_tokens / sequential_seconds, batched_tokens / batched_seconds
    return {
        "machine": machine_label(),
        "max_tokens": tokens,
        "one_stream": {
            "ttft_s": round(single["ttft_s"], 3),
            "tokens_per_s": round(single["tokens"] / single["seconds"], 1),
        },
        "eight_streams": {
            "median_ttft_s": round(sorted(s["ttft_s"] for s in streams)[4], 3),
            "tokens_per_s_total": round(sum(s["tokens"] for s in streams) / streams_seconds, 1),
        },
        "mixed_adapters_8": {
            "one_at_a_time_tokens_per_s": round(sequential_rate, 1),
            "batched_tokens_per_s": round(batched_rate, 1),
            "speedup": round(batched_rate / sequential_rate, 2),
            "goal": BATCH_GOAL,
            "goal_met": batched_rate / sequential_rate >= BATCH_GOAL,
        },
    }


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    proc, url = start_server(train_adapters(work))
    try:
        figures = measure(url, args.tokens)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
