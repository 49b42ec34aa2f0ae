"""The decode loop: one background thread that owns the model and decodes every running request together.

Why by hand: transformers' own continuous-batching manager (`generate_batch` / `init_continuous_batching`)
has no per-row LoRA adapter, and `generate` only batches requests that start together. Cost model: on a CPU a
decoding step of a 135M model is bound by reading the weights, so a step of 8 rows costs little more than a
step of 1; letting requests join and leave the running batch at every token boundary keeps that batch full.

Each iteration: admit queued requests while the batch has room (prefill them together past the prefix a prompt
shares with an earlier one: `prefix_cache.py`; sample each one's first token; merge their caches into the
batch: `batch.py`; again for those that came meanwhile), then one decoding step for all rows, each
with its own adapter (routed by `mixed_lora.py`, else PEFT's `adapter_names=`), its own sampler and generator
(`sampling.py`) and its own stop strings (`stops.py`). A row leaves at EOS, a stop string, max_new_tokens,
its deadline or its cancellation.

Failures stay with the requests they touch: an error while handling one row fails that row only; a failed
batched forward fails the rows of that batch (their cache is then unusable) and the loop goes on with the next
requests. If the thread itself ever ends, every waiting caller is told at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from smoltune.serve.batch import DecodeBatch, is_plain, left_aligned
from smoltune.serve.mixed_lora import routing_of
from smoltune.serve.prefix_cache import MISS, Hit, PrefixCache, batched_past, row_states
from smoltune.serve.request import Request
from smoltune.serve.sampling import choose_token, make_generator, scored_token
from smoltune.serve.scoring import prompt_logprobs
from smoltune.serve.types import TokenEvent, TokenLogprob

log = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
FAILED = "generation failed on the server; retry the request"
STOPPED = "the server stopped before this request finished"


class DecodeLoop:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch: int,
        observer: Any,
        on_settled: Callable[[Request], None],
        prefix_cache_tokens: int = 0,
    ) -> None:
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.model_lock = threading.Lock()  # held for each forward; add_adapter takes it between steps
        # Prompts' keys and values kept for later prompts that start alike (prefix_cache.py); used under model_lock.
        self.prefix = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        self._observer, self._on_settled = observer, on_settled
        self._eos = _eos_ids(model, tokenizer)
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._rows: list[Request] = []
        self._taken: list[Request] = []  # taken off the queue this iteration, not yet running or settled
        self._batch = DecodeBatch()
        self._stopping = False
        self.alive = True
        self._thread = threading.Thread(target=self._run, daemon=True, name="smoltune-decode")
        self._thread.start()

    def put(self, request: Request) -> bool:
        """Queue a request; False when the loop has ended."""
        with self._cond:
            if not self.alive or self._stopping:
                return False
            self._waiting.append(request)
            self._cond.notify()
        return True

    def stop(self, timeout_s: float = 30) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_s)

    # -- the thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        try:
            with torch.inference_mode():
                while self._next_requests():
                    try:
                        self._iteration()
                    except Exception:  # noqa: BLE001 - a failed step must not stop the server
                        log.exception("decoding step failed; failing the rows of this batch")
                        self._fail_rows([*self._taken, *self._rows])
        finally:
            with self._cond:
                self.alive = False
                left = [*self._waiting, *self._taken, *self._rows]
                self._waiting.clear()
            self._rows, self._batch = [], DecodeBatch()
            for request in left:
                self._fail(request, STOPPED)

    def _next_requests(self) -> bool:
        """Wait for work; False once stopping."""
        with self._cond:
            while not self._waiting and not self._rows and not self._stopping:
                self._cond.wait()
            return not self._stopping

    def _iteration(self) -> None:
        # Prefills first: requests that came while others were prefilled are admitted before the next decoding
        # step, so a burst of requests waits for prefills only, not for decoding steps in between (vLLM's
        # scheduler also puts prefills first). At most max_batch rounds, so a stream of requests that finish at
        # their prefill (scoring) cannot hold the running rows back for long.
        for _ in range(self.max_batch):
            if not self._admit_waiting():
                break
        if self._rows:
            self._step()

    def _admit_waiting(self) -> bool:
        """Admit the queued requests that fit (dropping cancelled and expired ones); False if none was taken."""
        now = time.monotonic()
        with self._cond:
            gone = [r for r in self._waiting if r.handle.cancelled or r.expired(now)]
            for request in gone:
                self._waiting.remove(request)
            joining = [
                self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_batch - len(self._rows)))
            ]
            self._taken = [*gone, *joining]
        for request in gone:
            self._finish(request, "cancelled" if request.handle.cancelled else "deadline")
        self._admit(joining)
        self._taken = []
        return bool(joining)

    def _admit(self, joining: list[Request]) -> None:
        """Prefill the joining requests together, take each one's first token, merge those that go on."""
        ready = []
        for request in joining:
            params = request.params
            if params.max_new_tokens == 0 and not params.echo_logprobs:
                self._finish(request, "length")
            else:
                ready.append(request)
        if not ready:
            return
        try:
            out, mask, computed = self._prefill(ready)
        except Exception:  # noqa: BLE001 - only these requests are affected; the running rows go on
            log.exception("prefill failed")
            if self.prefix is not None:  # never let a kept prompt that took part fail every prompt after it
                with self.model_lock:
                    self.prefix.clear()
            for request in ready:
                self._fail(request, FAILED)
            return
        staying = []
        for row, request in enumerate(ready):
            try:
                # Padding before the row's computed tokens, which is where its logits start.
                padding = int(computed.shape[1] - computed[row].sum())
                if not self._first_token(request, out.logits[row], padding):
                    staying.append(row)
            except Exception:  # noqa: BLE001 - only this request is affected
                log.exception("handling a prefill's token failed")
                self._fail(request, FAILED)
        if not staying:
            return
        try:
            self._batch.join(out.past_key_values, mask, staying)
        except Exception:  # noqa: BLE001 - the running batch is left as it was; only the newcomers fail
            log.exception("merging prefilled rows into the batch failed")
            for row in staying:
                self._fail(ready[row], FAILED)
            return
        self._rows += [ready[row] for row in staying]

    def _prefill(self, ready: list[Request]) -> tuple[Any, Any, Any]:
        """One forward over the prompts past their cached prefixes (prefix_cache.py), each row's cached part and
        its computed part left-padded to the longest; returns its output, the [n, width] mask of the whole cache
        and the mask of the computed part (where the logits are)."""
        import torch

        pad = self.tokenizer.pad_token_id or 0  # any id: padding is masked
        device = self.model.device
        echo = any(r.params.echo_logprobs for r in ready)
        with self.model_lock, self._adapters([r.adapter for r in ready]) as adapter_kwargs:
            hits = [self._cached_prefix(r) for r in ready]
            past, past_mask = batched_past(hits, device)
            rest = [r.prompt_ids[hit.tokens :] for r, hit in zip(ready, hits, strict=True)]
            width = max(len(ids) for ids in rest)
            ids = torch.tensor([[pad] * (width - len(row)) + row for row in rest], device=device)
            computed = torch.tensor(
                [[0] * (width - len(row)) + [1] * len(row) for row in rest], dtype=torch.long, device=device
            )
            mask = torch.cat([past_mask, computed], dim=1)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0)[:, past_mask.shape[1] :],
                past_key_values=past,
                use_cache=True,
                logits_to_keep=0 if echo else 1,  # 0: every position's logits, for the prompts' log-probs
                **adapter_kwargs,
            )
            self._keep_prefixes(ready, out.past_key_values, mask)
        if any(hit.tokens for hit in hits):  # padding before the cached part and before the computed part
            mask = left_aligned(out.past_key_values, mask)
        self._notify("on_prefill", sum(hit.tokens for hit in hits), sum(len(row) for row in rest))
        return out, mask, computed

    def _cached_prefix(self, request: Request) -> Hit:
        """The request's longest cached prefix; none for a prompt whose every token's log-prob is asked for."""
        if self.prefix is None or request.params.echo_logprobs:
            return MISS
        return self.prefix.match(request.adapter, request.prompt_ids)

    def _keep_prefixes(self, ready: list[Request], cache: Any, mask: Any) -> None:
        if self.prefix is None or not is_plain(cache):
            return
        try:
            for row, request in enumerate(ready):
                if len(request.prompt_ids) > self.prefix.max_tokens:
                    continue  # it would not be kept: not worth the copy
                keys, values = row_states(cache, mask, row)
                self.prefix.add(request.adapter, request.prompt_ids, keys, values)
        except Exception:  # noqa: BLE001 - keeping is an optimisation: it must never fail the requests
            log.exception("keeping prompts in the prefix cache failed; emptied it")
            self.prefix.clear()

    def _first_token(self, request: Request, logits: Any, padding: int) -> bool:
        """The prompt's log-probs if asked, then the first token; True when the request is already done."""
        params = request.params
        if params.echo_logprobs:
            own = logits[padding:]
            request.prompt_logprobs = prompt_logprobs(own, request.prompt_ids, params.logprobs, self._text_of)
        if params.max_new_tokens == 0:
            return self._finish(request, "length")
        request.generator = make_generator(params.seed, self.model.device)
        return self._accept(request, logits[-1])

    def _step(self) -> None:
        """One token for every running row; rows that are done leave the batch."""
        now = time.monotonic()
        for request in list(self._rows):
            if request.handle.cancelled or request.expired(now):
                self._finish(request, "cancelled" if request.handle.cancelled else "deadline")
        self._drop_settled()
        if not self._rows:
            return
        inputs = self._batch.step_inputs([r.last_token for r in self._rows])
        self._notify("on_batch", len(self._rows))
        with self.model_lock, self._adapters([r.adapter for r in self._rows]) as adapter_kwargs:
            out = self.model(**inputs, logits_to_keep=1, **adapter_kwargs)
        self._batch.advance(inputs)
        for row, request in enumerate(self._rows):
            try:
                self._accept(request, out.logits[row, -1])
            except Exception:  # noqa: BLE001 - only this row is affected
                log.exception("handling a decoded token failed")
                self._fail(request, FAILED)
        self._drop_settled()

    def _drop_settled(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if not r.handle.done]
        self._batch.keep(keep)
        self._rows = [self._rows[i] for i in keep]

    def _accept(self, request: Request, logits: Any) -> bool:
        """Sample the row's next token from `logits`, send what text it releases; True when the row is done."""
        params = request.params
        token = choose_token(logits, params, request.generator)
        if token in self._eos:
            return self._finish(request, "stop")
        if params.logprobs is None:
            scored = TokenLogprob(token, self._text_of(token), None)
        else:
            scored = scored_token(logits, token, params.logprobs, self._text_of)
        request.tokens.append(scored)
        request.handle.emit(TokenEvent(request.text.add(token), scored))
        self._time_token(request)
        if request.text.stopped:
            return self._finish(request, "stop")
        if len(request.tokens) >= params.max_new_tokens:
            return self._finish(request, "length")
        request.last_token = token
        return False

    def _time_token(self, request: Request) -> None:
        now, label = time.monotonic(), request.adapter  # None: the base model
        if request.last_token_at is None:
            self._notify("on_first_token", label, now - request.submitted)
        else:
            self._notify("on_token", label, now - request.last_token_at)
        request.last_token_at = now

    # -- settling --------------------------------------------------------------------------------------------

    def _finish(self, request: Request, reason: str) -> bool:
        rest = request.text.flush()
        if rest:
            request.handle.emit(TokenEvent(rest))
        if request.handle.finish(request.completion(reason)):
            self._settled(request, reason)
        return True

    def _fail(self, request: Request, message: str) -> None:
        if request.handle.fail(message):
            self._settled(request, "error")

    def _fail_rows(self, rows: list[Request]) -> None:
        for request in rows:
            self._fail(request, FAILED)
        self._rows, self._taken, self._batch = [], [], DecodeBatch()

    def _settled(self, request: Request, reason: str) -> None:
        self._notify("on_finish", request.adapter, len(request.prompt_ids), len(request.tokens), reason)
        self._on_settled(request)

    def _notify(self, name: str, *args: Any) -> None:
        """Call the observer's method if it has one; metrics must never fail a request."""
        method = getattr(self._observer, name, None)
        if method is None:
            return
        try:
            method(*args)
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("observer %s failed", name)

    # -- helpers ---------------------------------------------------------------------------------------------

    @contextmanager
    def _adapters(self, adapters: list[str | None]) -> Iterator[dict[str, Any]]:
        """The forward's extra arguments for these rows' adapters. With any adapter attached the model is a
        PeftModel and every row must name its adapter (or the base), else PEFT would apply the active adapter to
        all rows: by the routed layers (mixed_lora.py) where they are installed, else PEFT's `adapter_names`."""
        if not hasattr(self.model, "peft_config"):
            yield {}
        elif (routing := routing_of(self.model)) is None:
            yield {"adapter_names": [a or BASE for a in adapters]}
        else:
            with routing.rows(adapters):
                yield {}

    def _text_of(self, token: int) -> str:
        return self.tokenizer.decode([token])


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and the generation config's (one id or a list)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids
