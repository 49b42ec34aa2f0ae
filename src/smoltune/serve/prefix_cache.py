"""Prompts' keys and values kept after their prefill, so that a later prompt starting with the same tokens (the
chat template's system prompt, a few-shot context, one question's context under each of its choices) prefills
only the rest.

Cost model: a prefill on the CPU is compute-bound (SmolLM2-135M on 2 cores: ~360 prompt tokens/s for one row,
~670 for eight), so a hit of n tokens saves n tokens of forward pass; it costs copying those n tokens' keys and
values into the batch (46 KB a token for SmolLM2-135M in fp32) and the new tokens attending to them, which they
would have done anyway. An entry is one prompt's keys and values for one adapter (a LoRA on k_proj/v_proj
changes them), matched by the longest common prefix of token ids against every entry of that adapter (a Python
comparison of ids: entries x shared tokens steps, where a prefill's forward costs milliseconds a token); an
entry that a longer prompt extends is replaced by it, and a prompt that a kept one extends is not kept again.
Least recently used entries go first beyond `max_tokens` tokens in all (memory on top of the KV budget's). Keys
carry the rotary positions they were computed at (0..n-1), the positions a new prompt's first n tokens take, so
they are reused as they are. The last prompt token is always computed: its logits give the first token.

Written by hand: transformers has no cache shared across requests of a hand-made decoding loop; vLLM's automatic
prefix caching and SGLang's radix cache live inside their own engines.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    """The first `tokens` of a prompt, found in the cache: per layer [kv heads, tokens, head dim]."""

    tokens: int
    keys: tuple[Any, ...] = ()
    values: tuple[Any, ...] = ()


MISS = Hit(0)


@dataclass(frozen=True)
class _Entry:
    ids: tuple[int, ...]
    keys: tuple[Any, ...]  # per layer [kv heads, len(ids), head dim]
    values: tuple[Any, ...]


class PrefixCache:
    """Not thread-safe: the decode loop uses it under its model lock (adapters change under the same lock)."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[str | None, tuple[int, ...]], _Entry] = OrderedDict()
        self._tokens = 0

    @property
    def tokens(self) -> int:
        return self._tokens

    def match(self, adapter: str | None, ids: list[int]) -> Hit:
        """The longest cached prefix of `ids` for `adapter`, at most all but its last token."""
        limit, best, found = len(ids) - 1, 0, None
        for (owner, _), entry in self._entries.items():
            if owner == adapter and (shared := _common_prefix(entry.ids, ids, limit)) > best:
                best, found = shared, entry
        if found is None:
            return MISS
        self._entries.move_to_end((adapter, found.ids))
        return Hit(best, tuple(k[:, :best] for k in found.keys), tuple(v[:, :best] for v in found.values))

    def add(self, adapter: str | None, ids: list[int], keys: list[Any], values: list[Any]) -> None:
        """Keep one prompt's keys and values (per layer [kv heads, len(ids), head dim], owned by the cache)."""
        key = (adapter, tuple(ids))
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        if len(ids) > self.max_tokens:
            return
        for owner, kept in self._entries:
            if owner == adapter and kept[: len(ids)] == key[1]:  # a kept prompt extends this one: it gives all
                self._entries.move_to_end((owner, kept))
                return
        for old in [k for k in self._entries if k[0] == adapter and key[1][: len(k[1])] == k[1]]:
            self._drop(old)  # a prefix of this prompt: everything it could give, this one gives
        self._entries[key] = _Entry(key[1], tuple(keys), tuple(values))
        self._tokens += len(ids)
        while self._tokens > self.max_tokens:
            self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0

    def _drop(self, key: tuple[str | None, tuple[int, ...]]) -> None:
        self._tokens -= len(self._entries.pop(key).ids)


def _common_prefix(a: tuple[int, ...], b: list[int], limit: int) -> int:
    n = min(len(a), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def batched_past(hits: list[Hit], device: Any) -> tuple[Any, Any]:
    """The rows' cached prefixes as one DynamicCache, each left-padded to the longest, and its [rows, width] 0/1
    mask; (None, an empty mask) when no row has one."""
    import torch
    from transformers.cache_utils import DynamicCache

    width = max(hit.tokens for hit in hits)
    rows = [[0] * (width - hit.tokens) + [1] * hit.tokens for hit in hits]
    mask = torch.tensor(rows, dtype=torch.long, device=device).reshape(len(hits), width)
    if width == 0:
        return None, mask
    some = next(hit for hit in hits if hit.tokens)
    cache = DynamicCache()
    for layer, (key, value) in enumerate(zip(some.keys, some.values, strict=True)):
        heads, dim = key.shape[0], key.shape[-1]
        keys = key.new_zeros(len(hits), heads, width, dim)
        values = value.new_zeros(len(hits), heads, width, dim)
        for row, hit in enumerate(hits):
            if hit.tokens:
                keys[row, :, width - hit.tokens :] = hit.keys[layer]
                values[row, :, width - hit.tokens :] = hit.values[layer]
        cache.update(keys, values, layer)
    return cache, mask


def row_states(cache: Any, mask: Any, row: int) -> tuple[list[Any], list[Any]]:
    """One row's keys and values at its real tokens (where `mask` is 1), per layer, copied out of `cache`."""
    index = mask[row].nonzero().squeeze(1)
    keys = [layer.keys[row].index_select(1, index) for layer in cache.layers]
    values = [layer.values[row].index_select(1, index) for layer in cache.layers]
    return keys, values
