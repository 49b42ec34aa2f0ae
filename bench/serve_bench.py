"""Serving speed on this machine: the embedded SmolLM2 with 2 adapters behind `smoltune serve`.

    make bench-serve                      # a few minutes on 2 cores; run it on an idle machine
    python bench/serve_bench.py --tokens 32 [--adapter NAME=DIR ...]

Makes two LoRA adapters (r=16 on the 7 projections, untrained: their weights do not change the cost of a
step, which is all this measures; pass trained ones with --adapter), starts the real server in its own process
on a free port, and measures with the `openai` client the issue's goals: 1 stream against 8 concurrent streams
alternating between the adapters (one decode batch on the server: continuous batching) - generated tokens/s in
total, and the median time to first token. Every prompt is one never sent before (a number of its own), so the
server's prefix cache reuses only what prompts really share (the chat template, the instruction's words);
--no-prefix-cache serves without it. Writes runs/bench/serve.json and prints it with the machine's name.
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
from statistics import median

from verdicts import machine_label

ROOT = Path(__file__).resolve().parent.parent
# The issue's goals: 8 streams deliver >= 4x the tokens/s of 1; their median time to first token <= 2x 1's.
THROUGHPUT_GOAL, TTFT_GOAL = 4.0, 2.0
STREAMS = 8


def prompts(first: int, count: int) -> list[str]:
    """Prompts never sent before (a number of their own), so that what the server's prefix cache reuses is only
    what real prompts share (the chat template and the instruction's words), never a whole repeated prompt."""
    return [f"Write a sentence about the number {n}." for n in range(first, first + count)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement (the median is kept)")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=DIR: serve these instead")
    parser.add_argument("--no-prefix-cache", action="store_true", help="serve with --prefix-cache-tokens 0")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "serve.json"))
    return parser.parse_args()


def make_adapters(work: Path) -> dict[str, str]:
    """Two untrained adapters on the embedded model, made in seconds (no training on the benchmark's clock)."""
    from peft import LoraConfig, get_peft_model

    from smoltune.model import load_model_and_tokenizer, resolve_model

    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapters = {}
    for name in ("first", "second"):
        base, _ = load_model_and_tokenizer(resolve_model("embedded").path, "cpu")
        folder = work / name
        get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=projections)).save_pretrained(folder)
        adapters[name] = str(folder)
    return adapters


def start_server(adapters: dict[str, str], extra: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cli = str(Path(sys.executable).parent / "smoltune")
    args = [cli, "serve", "--port", str(port), *[a for n, p in adapters.items() for a in ("--adapter", f"{n}={p}")]]
    args += extra
    proc = subprocess.Popen(args, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def one_stream(client: object, model: str, prompt: str, tokens: int) -> dict:
    """Time to first token and the answer's length in tokens (the server's own count, sent as usage)."""
    started = time.perf_counter()
    first, generated = None, 0
    stream = client.chat.completions.create(  # type: ignore[attr-defined]
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
        if chunk.usage is not None:
            generated = chunk.usage.completion_tokens
    done = time.perf_counter()
    return {"ttft_s": (first or done) - started, "seconds": done - started, "tokens": generated}


def concurrent_streams(client: object, tokens: int, texts: list[str]) -> dict:
    """STREAMS streams sent at once, alternating adapters: total generated tokens/s and the median TTFT."""
    models = ["first", "second"] * (STREAMS // 2)
    with ThreadPoolExecutor(STREAMS) as pool:
        started = time.perf_counter()
        streams = list(pool.map(lambda i: one_stream(client, models[i], texts[i], tokens), range(STREAMS)))
        seconds = time.perf_counter() - started
    return {
        "median_ttft_s": median([s["ttft_s"] for s in streams]),
        "tokens_per_s": sum(s["tokens"] for s in streams) / seconds,
    }


def server_first_tokens(url: str) -> tuple[float, float]:
    """The server's own time-to-first-token histogram so far (submission to first token, all models): its sum of
    seconds and its count, read from /metrics. The difference from what the client sees is HTTP and the client."""
    import httpx

    totals = {"_sum": 0.0, "_count": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        for suffix in totals:
            if line.startswith(f"smoltune_time_to_first_token_seconds{suffix}{{"):
                totals[suffix] += float(line.rsplit(" ", 1)[1])
    return totals["_sum"], totals["_count"]


def server_mean(before: tuple[float, float], after: tuple[float, float]) -> float:
    return round((after[0] - before[0]) / max(after[1] - before[1], 1), 3)


def measure(url: str, tokens: int, repeats: int, prefix_cache: bool) -> dict:
    from openai import OpenAI

    client = OpenAI(
        base_url=f"{url}/v1", api_key=os.environ.get("SMOLTUNE_API_KEY", "none"), max_retries=0, timeout=600
    )
    one_stream(client, "first", "warm up", 4)
    before = server_first_tokens(url)
    singles = [one_stream(client, "first", text, tokens) for text in prompts(0, repeats)]
    single_ttft = median([s["ttft_s"] for s in singles])
    single_rate = median([s["tokens"] / s["seconds"] for s in singles])
    between = server_first_tokens(url)
    many = [concurrent_streams(client, tokens, prompts(100 * (k + 1), STREAMS)) for k in range(repeats)]
    after = server_first_tokens(url)
    many_ttft, many_rate = median([m["median_ttft_s"] for m in many]), median([m["tokens_per_s"] for m in many])
    return {
        "machine": machine_label(),
        "max_tokens": tokens,
        "prefix_cache": prefix_cache,
        "repeats": repeats,
        "one_stream": {
            "ttft_s": round(single_ttft, 3),
            "server_mean_ttft_s": server_mean(before, between),
            "tokens_per_s": round(single_rate, 1),
        },
        "eight_streams": {
            "median_ttft_s": round(many_ttft, 3),
            "server_mean_ttft_s": server_mean(between, after),
            "tokens_per_s_total": round(many_rate, 1),
        },
        "goals": {
            "throughput_ratio": round(many_rate / single_rate, 2),
            "throughput_goal": THROUGHPUT_GOAL,
            "ttft_ratio": round(many_ttft / single_ttft, 2),
            "ttft_goal": TTFT_GOAL,
            "met": many_rate / single_rate >= THROUGHPUT_GOAL and many_ttft / single_ttft <= TTFT_GOAL,
        },
    }


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    adapters = dict(item.split("=", 1) for item in args.adapter) or make_adapters(work)
    proc, url = start_server(adapters, ["--prefix-cache-tokens", "0"] if args.no_prefix_cache else [])
    try:
        figures = measure(url, args.tokens, args.repeats, not args.no_prefix_cache)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
