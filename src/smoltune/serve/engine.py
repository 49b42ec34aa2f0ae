"""The serving engine: one base model in memory, any number of LoRA adapters on it, chosen per request.

    from smoltune.serve.engine import load_engine
    engine = load_engine("embedded", {"tuned": "runs/<run>"})
    print(engine.complete(engine.encode("Say hi."), "tuned", max_new_tokens=16).text)

Cost model: on a CPU a decoding step of a 135M model is bound by reading the weights, so 8 rows in one step
cost little more than 1. Greedy requests that arrive within `window_s` (20 ms) of the first are therefore decoded
together in one `generate`, each row with its own adapter (PEFT's mixed-adapter batches, `adapter_names=`);
`set_adapter` would serialise them and let one request see another's adapter. Streaming and sampled requests
(their own seed, temperature) run alone. One `generate` runs at a time (the model is not thread-safe).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoltune.errors import ConfigError

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str
    template: str  # the prompt template the adapter was trained with


@dataclass
class _Job:
    prompt_ids: list[int]
    adapter: str | None
    max_new_tokens: int
    stop: list[str]
    future: Future = field(default_factory=Future)


def adapter_source(name: str, path: str | Path) -> Adapter:
    """A run folder (its adapter and the template it trained with) or an adapter folder itself."""
    import json

    import yaml

    folder = Path(path).expanduser().resolve()
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        adapter_dir = summary["artifacts"].get("adapter_dir")
        if not adapter_dir:
            raise ConfigError([f"--adapter {name}={path}: that run trained a full model, not an adapter"])
        template = yaml.safe_load((folder / "config.yaml").read_text())["data"]["template"]
        return Adapter(name, adapter_dir, template)
    if (folder / "adapter_config.json").is_file():
        return Adapter(name, str(folder), "alpaca")
    raise ConfigError([f"--adapter {name}={path}: neither a run folder (summary.json) nor an adapter folder"])


class Engine:
    def __init__(
        self, model: Any, tokenizer: Any, base_name: str = "base", max_batch: int = 8, window_s: float = 0.02
    ) -> None:
        self.model, self.tokenizer, self.base_name = model, tokenizer, base_name
        self.adapters: dict[str, Adapter] = {}
        self.max_batch, self.window_s = max_batch, window_s
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 2048))
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job] = queue.Queue()
        threading.Thread(target=self._batch_loop, daemon=True, name="smoltune-batcher").start()

    # -- adapters ------------------------------------------------------------------------------------------

    def add_adapter(self, adapter: Adapter) -> None:
        """Attach an adapter (also while serving: the next batch can use it)."""
        from peft import PeftModel

        with self._lock:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(adapter.path, adapter_name=adapter.name)
            else:
                self.model = PeftModel.from_pretrained(self.model, adapter.path, adapter_name=adapter.name)
            self.model.eval()
            self.adapters[adapter.name] = adapter

    # -- requests ------------------------------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def check_length(self, prompt_ids: list[int], max_new_tokens: int) -> None:
        if len(prompt_ids) + max_new_tokens > self.max_positions:
            raise ValueError(
                f"the prompt is {len(prompt_ids)} tokens; with max_tokens {max_new_tokens} that exceeds the model's "
                f"{self.max_positions} positions"
            )

    def complete(
        self, prompt_ids: list[int], adapter: str | None, max_new_tokens: int, stop: list[str] = ()
    ) -> Completion:
        """A greedy completion, batched with whatever other greedy requests arrive meanwhile."""
        job = _Job(prompt_ids, adapter, max_new_tokens, list(stop or []))
        self._jobs.put(job)
        return job.future.result()

    def sample(
        self, prompt_ids: list[int], adapter: str | None, max_new_tokens: int, stop: list[str], sampling: dict
    ) -> Completion:
        """A sampled completion (temperature, top_p, seed), alone: its seed must not depend on its neighbours."""
        return _collect(self.stream(prompt_ids, adapter, max_new_tokens, stop, sampling), len(prompt_ids))

    def stream(
        self, prompt_ids: list[int], adapter: str | None, max_new_tokens: int, stop: list[str], sampling: dict | None
    ) -> Iterator[str | Completion]:
        """Text pieces as they are decoded, then the Completion (finish reason and token counts) last."""
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._generate_kwargs([prompt_ids], [adapter], max_new_tokens, sampling)
        counted: dict[str, Any] = {}

        def run() -> None:
            with self._lock, torch.inference_mode():
                if sampling and sampling.get("seed") is not None:
                    torch.manual_seed(int(sampling["seed"]))
                out = self.model.generate(**kwargs, streamer=streamer)
                counted["new"] = out[0, len(prompt_ids) :].tolist()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text, sent, stopped = "", 0, False
        for piece in streamer:
            text, stopped = _apply_stop(text + piece, stop)
            if len(text) > sent:
                yield text[sent:]
                sent = len(text)
            if stopped:
                break
        worker.join()  # generation may run on after a stop string; its tokens are not sent
        new = counted.get("new", [])
        used = _count_until_eos(new, self.tokenizer.eos_token_id)
        finish = "stop" if stopped or used < len(new) or len(new) < max_new_tokens else "length"
        yield Completion(text, len(prompt_ids), used, finish)

    # -- batching ------------------------------------------------------------------------------------------

    def _batch_loop(self) -> None:
        while True:
            batch = [self._jobs.get()]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._jobs.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
            try:
                results = self._run_batch(batch)
            except Exception as err:  # noqa: BLE001 - every waiting request must learn of the failure
                for job in batch:
                    job.future.set_exception(err)
                continue
            for job, result in zip(batch, results, strict=True):
                job.future.set_result(result)

    def _run_batch(self, batch: list[_Job]) -> list[Completion]:
        import torch

        longest = max(j.max_new_tokens for j in batch)
        kwargs = self._generate_kwargs([j.prompt_ids for j in batch], [j.adapter for j in batch], longest, None)
        with self._lock, torch.inference_mode():
            out = self.model.generate(**kwargs)
        width = kwargs["input_ids"].shape[1]
        results = []
        for row, job in zip(out, batch, strict=True):
            new = row[width:].tolist()[: job.max_new_tokens]
            used = new[: _count_until_eos(new, self.tokenizer.eos_token_id)]
            text, cut = _apply_stop(self.tokenizer.decode(used, skip_special_tokens=True), job.stop)
            finish = "stop" if cut or len(used) < len(new) or len(new) < job.max_new_tokens else "length"
            results.append(Completion(text, len(job.prompt_ids), len(used), finish))
        return results

    def _generate_kwargs(
        self, prompts: list[list[int]], adapters: list[str | None], max_new_tokens: int, sampling: dict | None
    ) -> dict[str, Any]:
        """Left-padded ids and masks (every prompt ends where generation starts), the adapter of each row."""
        import torch
        from peft import PeftModel

        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(self.model.device),
            "attention_mask": mask.to(self.model.device),
            "max_new_tokens": max_new_tokens,
            "pad_token_id": pad,
            "do_sample": bool(sampling),
        }
        if sampling:
            kwargs.update(temperature=float(sampling["temperature"]), top_p=float(sampling["top_p"]))
        if isinstance(self.model, PeftModel):
            kwargs["adapter_names"] = [a or BASE for a in adapters]
        return kwargs


def _count_until_eos(tokens: list[int], eos: int | None) -> int:
    return tokens.index(eos) if eos is not None and eos in tokens else len(tokens)


def _apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` cut before the first stop string, and whether one was found."""
    cuts = [text.index(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _collect(pieces: Iterator[str | Completion], prompt_tokens: int) -> Completion:
    for piece in pieces:
        if isinstance(piece, Completion):
            return piece
    return Completion("", prompt_tokens, 0, "stop")


def registry_adapters(registry_file: str | Path) -> dict[str, str]:
    """{name: adapter folder} of every promoted entry of a registry, named after its run."""
    import json

    path = Path(registry_file)
    if not path.is_file():
        raise ConfigError([f"--registry {registry_file}: no such file"])
    entries = json.loads(path.read_text())
    return {entry["run"]: entry["output_dir"] for entry in entries.values() if Path(entry["output_dir"]).is_dir()}


def load_engine(base_source: str, adapters: dict[str, str], max_batch: int = 8, window_s: float = 0.02) -> Engine:
    """The base model resolved like training's `model.source`, with every named adapter attached."""
    from smoltune.model import load_model_and_tokenizer, pick_device, resolve_model

    resolved = resolve_model(base_source)
    model, tokenizer = load_model_and_tokenizer(resolved.path, pick_device())
    model.eval()
    name = Path(resolved.hub_id or resolved.path).name
    engine = Engine(model, tokenizer, base_name=name, max_batch=max_batch, window_s=window_s)
    for name, path in adapters.items():
        engine.add_adapter(adapter_source(name, path))
    return engine
