"""The serving engine: one base model in memory, any number of LoRA adapters on it, chosen per request, and
every running request decoded together (continuous batching: see `loop.py` for why and how).

    from smoltune.serve.engine import load_engine
    from smoltune.serve.types import GenerationParams
    engine = load_engine("embedded", {"tuned": "runs/<run>"})
    handle = engine.submit(engine.encode("Say hi."), "tuned", GenerationParams(max_new_tokens=16))
    for event in handle.events():          # or handle.result()
        print(event.text, end="", flush=True)

`submit` refuses at once what can never work (ValueError, message safe for a client), what does not fit now
(EngineFull: the KV budget of `kv_budget.py`) and anything while draining (EngineClosed); everything else
is settled by the decode loop, which wakes the handle's waiters whatever happens.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoltune.errors import ConfigError
from smoltune.pipeline.registry import served_name
from smoltune.serve.kv_budget import default_kv_budget, footprint
from smoltune.serve.loop import DecodeLoop
from smoltune.serve.mixed_lora import install as install_routing
from smoltune.serve.request import Request, RequestHandle
from smoltune.serve.stops import StopText
from smoltune.serve.types import (
    ADAPTER_NAME,
    MAX_LOGPROBS,
    MAX_SEED,
    EngineClosed,
    EngineFull,
    GenerationParams,
)

__all__ = ["Adapter", "Engine", "RequestHandle", "adapter_source", "load_engine", "registry_adapters"]


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str
    template: str  # the prompt template the adapter was trained with


MAX_QUEUED_PER_SLOT = 4  # admitted requests per decode-batch row (running + waiting), at most
PREFIX_CACHE_SHARE = 4  # the prefix cache's default size: the KV budget's tokens over this (about 5% of free memory)


def run_template(run_dir: Path) -> str:
    """The prompt template a run trained with, from its config.yaml (only that field: the run's other settings
    may need what this machine lacks, e.g. MLflow or the harness's task files)."""
    import yaml

    try:
        return str(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["data"]["template"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
        raise ConfigError([f"{run_dir}: config.yaml has no readable data.template ({type(err).__name__})"]) from None


def adapter_source(name: str, path: str | Path) -> Adapter:
    """A run folder (its adapter and the template it trained with) or an adapter folder itself."""
    import json

    if not re.match(ADAPTER_NAME, name):
        raise ConfigError([f"--adapter {name}={path}: a name is letters, digits, '_' and '-' (no '.'), e.g. tuned-v2"])
    folder = Path(path).expanduser().resolve()
    if (folder / "summary.json").is_file():
        try:
            adapter_dir = json.loads((folder / "summary.json").read_text())["artifacts"].get("adapter_dir")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(
                [f"--adapter {name}={path}: summary.json cannot be read ({type(err).__name__})"]
            ) from None
        if not adapter_dir:
            raise ConfigError([f"--adapter {name}={path}: that run trained a full model, not an adapter"])
        return Adapter(name, adapter_dir, run_template(folder))
    if (folder / "adapter_config.json").is_file():
        return Adapter(name, str(folder), "alpaca")
    raise ConfigError([f"--adapter {name}={path}: neither a run folder (summary.json) nor an adapter folder"])


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        base_name: str = "base",
        max_batch: int = 8,
        kv_budget_tokens: int | None = None,
        observer: Any = None,
        prefix_cache_tokens: int | None = None,
    ) -> None:
        self.tokenizer, self.base_name = tokenizer, base_name
        self.adapters: dict[str, Adapter] = {}
        self.max_batch = max_batch
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 2048))
        self.kv_budget_tokens = kv_budget_tokens or default_kv_budget(model)
        self._admitted: set[Request] = set()  # queued or running: what the KV budget must hold
        self._cond = threading.Condition()
        self._closing = False
        if prefix_cache_tokens is None:  # a quarter of the KV budget's tokens again (0: no prefix cache)
            prefix_cache_tokens = self.kv_budget_tokens // PREFIX_CACHE_SHARE
        self._loop = DecodeLoop(model, tokenizer, max_batch, observer, self._settled, prefix_cache_tokens)

    @property
    def model(self) -> Any:
        return self._loop.model

    # -- adapters ------------------------------------------------------------------------------------------

    def add_adapter(self, adapter: Adapter) -> None:
        """Attach an adapter; while serving it waits for the current step and counts from the next one."""
        from peft import PeftModel

        with self._loop.model_lock:
            model = self._loop.model
            if isinstance(model, PeftModel):
                model.load_adapter(adapter.path, adapter_name=adapter.name)
            else:
                model = PeftModel.from_pretrained(model, adapter.path, adapter_name=adapter.name)
            install_routing(model)  # each row's adapter in two matmuls per layer (mixed_lora.py), where it can
            self._loop.model = model.eval()
            if self._loop.prefix is not None:  # kept keys and values were computed by the model as it was
                self._loop.prefix.clear()
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

    def submit(self, prompt_ids: list[int], adapter: str | None, params: GenerationParams) -> RequestHandle:
        """Queue one request; its handle streams its tokens or gives its result."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if adapter is not None and adapter not in self.adapters:
            raise ValueError(f"no adapter named {adapter!r} is attached")
        _check_params(params)
        self.check_length(prompt_ids, params.max_new_tokens)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        request = Request(RequestHandle(), list(prompt_ids), adapter, params, StopText(decode, params.stop))
        with self._cond:
            if self._closing:
                raise EngineClosed("the server is shutting down; retry on another instance")
            self._check_budget(request)
            self._admitted.add(request)
        if not self._loop.put(request):
            self._settled(request)
            raise EngineClosed("the engine has stopped; restart the server")
        return request.handle

    def _check_budget(self, request: Request) -> None:
        if request.reserved > self.kv_budget_tokens:
            raise ValueError(
                f"the prompt ({len(request.prompt_ids)} tokens) plus max_tokens ({request.params.max_new_tokens}) "
                f"needs more KV cache than this server holds ({self.kv_budget_tokens} tokens); ask for fewer"
            )
        lengths = [r.reserved for r in self._admitted] + [request.reserved]
        if footprint(lengths, self.max_batch) > self.kv_budget_tokens:
            raise EngineFull("the server's KV cache is full with other requests; retry shortly")
        # A bounded queue: a waiting request holds no thread (the API awaits it on its event loop) but holds its
        # prompt, its reserved KV rows and a client that waits; a burst beyond a few rounds of the batch is told to
        # retry (503) rather than left to time out in a queue it cannot leave soon.
        if len(self._admitted) >= MAX_QUEUED_PER_SLOT * self.max_batch:
            raise EngineFull(f"{len(self._admitted)} requests are already waiting or running; retry shortly")

    def _settled(self, request: Request) -> None:
        with self._cond:
            self._admitted.discard(request)
            self._cond.notify_all()

    def drain(self, timeout_s: float) -> None:
        """Take no more requests, let the admitted ones finish (failing any left after timeout_s), stop the loop."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            while self._admitted and self._loop.alive and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        self._loop.stop()


def _check_params(params: GenerationParams) -> None:
    """The bounds the API validates that torch depends on, held again here: an out-of-range value must never
    reach the decode loop (a seed past 64 bits or a NaN temperature would raise inside it)."""
    problems = []
    if params.max_new_tokens < 0:
        problems.append("max_tokens must be >= 0")
    if not (math.isfinite(params.temperature) and params.temperature >= 0):
        problems.append("temperature must be a finite number >= 0")
    if not (0 < params.top_p <= 1):
        problems.append("top_p must be in (0, 1]")
    if params.seed is not None and not 0 <= params.seed <= MAX_SEED:
        problems.append(f"seed must be in [0, {MAX_SEED}]")
    if params.logprobs is not None and not 0 <= params.logprobs <= MAX_LOGPROBS:
        problems.append(f"logprobs must be in [0, {MAX_LOGPROBS}]")
    if params.deadline_s is not None and not params.deadline_s > 0:
        problems.append("the deadline must be > 0 seconds")
    if problems:
        raise ValueError("; ".join(problems))


def registry_adapters(registry_file: str | Path) -> dict[str, str]:
    """{name: adapter folder} of every promoted entry of a registry, named after its run."""
    import json

    path = Path(registry_file)
    if not path.is_file():
        raise ConfigError([f"--registry {registry_file}: no such file"])
    entries = json.loads(path.read_text())
    return {
        served_name(entry["run"]): entry["output_dir"]
        for entry in entries.values()
        if Path(entry["output_dir"]).is_dir()
    }


def load_engine(
    base_source: str,
    adapters: dict[str, str],
    max_batch: int = 8,
    kv_budget_tokens: int | None = None,
    observer: Any = None,
    prefix_cache_tokens: int | None = None,
) -> Engine:
    """The base model resolved like training's `model.source`, with every named adapter attached."""
    from smoltune.model import load_model_and_tokenizer, pick_device, resolve_model

    resolved = resolve_model(base_source)
    model, tokenizer = load_model_and_tokenizer(resolved.path, pick_device())
    model.eval()
    engine = Engine(
        model,
        tokenizer,
        base_name=Path(resolved.hub_id or resolved.path).name,
        max_batch=max_batch,
        kv_budget_tokens=kv_budget_tokens,
        observer=observer,
        prefix_cache_tokens=prefix_cache_tokens,
    )
    for name, path in adapters.items():
        engine.add_adapter(adapter_source(name, path))
    return engine
