"""The prefix cache (smoltune.serve.prefix_cache): which entry a prompt finds, what the budget keeps, and that
prompts prefilled past a cached prefix answer exactly as prompts computed whole (greedy tokens, their log-probs,
mixed adapters, rows with different cached lengths in one prefill)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from smoltune.serve.prefix_cache import MISS, PrefixCache
from smoltune.serve.types import GenerationParams
from tests.serve.test_engine import ids_of


def states(length: int, mark: float = 0.0) -> tuple[list, list]:
    """Two layers' keys and values for `length` tokens ([kv heads 2, length, head dim 4]); token i holds i + mark."""
    import torch

    token = torch.arange(length, dtype=torch.float32).reshape(1, length, 1).expand(2, length, 4) + mark
    return [token.clone(), token.clone()], [token.clone() * 2, token.clone() * 2]


def test_the_longest_shared_prefix_of_the_same_adapter_is_found_never_the_last_token() -> None:
    cache = PrefixCache(max_tokens=100)
    cache.add("a", [1, 2, 3, 4, 5], *states(5))
    cache.add("a", [1, 2, 9, 9], *states(4, mark=0.5))
    hit = cache.match("a", [1, 2, 3, 4, 7, 8])
    assert hit.tokens == 4 and hit.keys[0].shape == (2, 4, 4) and float(hit.keys[1][0, 3, 0]) == 3.0
    assert float(hit.values[0][0, 3, 0]) == 6.0
    assert cache.match("a", [1, 2, 3, 4, 5]).tokens == 4  # the same prompt: its last token is computed again
    assert cache.match("b", [1, 2, 3, 4, 7]) is MISS  # another adapter's keys are not this one's
    assert cache.match(None, [1, 2, 3]) is MISS
    assert cache.match("a", [7, 1, 2]) is MISS


def test_the_budget_keeps_the_recently_used_and_a_longer_prompt_replaces_its_prefix() -> None:
    cache = PrefixCache(max_tokens=10)
    cache.add("a", [1, 2, 3], *states(3))
    cache.add("a", [1, 2, 3, 4, 5], *states(5))  # extends the first: the first goes
    assert cache.tokens == 5
    cache.add("a", [7, 8, 9], *states(3))
    assert cache.match("a", [1, 2, 3, 4, 5, 6]).tokens == 5  # used: now the most recent
    cache.add("a", [4, 4, 4], *states(3))  # 11 tokens > 10: the least recently used ([7, 8, 9]) goes
    assert cache.tokens == 8 and cache.match("a", [7, 8, 9, 1]) is MISS
    assert cache.match("a", [1, 2, 3, 4, 5, 6]).tokens == 5
    cache.add("a", list(range(20, 31)), *states(11))  # longer than the whole budget: not kept
    assert cache.tokens == 8
    cache.add("a", [1, 2, 3, 4], *states(4))  # a kept prompt extends it: nothing new to keep
    assert cache.tokens == 8
    cache.clear()
    assert cache.tokens == 0 and cache.match("a", [1, 2, 3, 4, 5, 6]) is MISS


def test_left_aligned_moves_every_row_s_padding_to_its_left() -> None:
    import torch
    from transformers.cache_utils import DynamicCache

    from smoltune.serve.batch import left_aligned

    # Row 0 as a prefill past a cached prefix lays it out: [pad, cached, cached, pad, computed].
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1]])
    tokens = torch.tensor([[9.0, 1, 2, 9, 3], [1, 2, 3, 4, 5]])  # each column's token, 9 for padding
    cache = DynamicCache()
    cache.update(tokens[:, None, :, None].expand(2, 3, 5, 4).clone(), -tokens[:, None, :, None].expand(2, 3, 5, 4), 0)
    aligned = left_aligned(cache, mask)
    assert aligned.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert cache.layers[0].keys[0, 2, :, 0].tolist() == [9, 9, 1, 2, 3]  # the real tokens keep their order
    assert cache.layers[0].values[1, 0, :, 3].tolist() == [-1, -2, -3, -4, -5]


class Prefills:
    """An observer counting prompt tokens taken from the cache and computed."""

    def __init__(self) -> None:
        self.cached = self.computed = 0

    def on_prefill(self, cached: int, computed: int) -> None:
        self.cached += cached
        self.computed += computed


SHARED = "Below is an instruction that describes a task. Add the two numbers and say the result: "
CASES = [(SHARED + "3 and 4.", "left"), (SHARED + "15 and 26, twice.", "left"), (SHARED + "7 and 1.", "right"),
         (SHARED + "3 and 4.", None), (SHARED + "3 and 4.", "left")]  # fmt: skip


def answers(engine, cases, params: GenerationParams) -> list[tuple[list[int], list[float]]]:
    handles = [engine.submit(engine.encode(prompt), adapter, params) for prompt, adapter in cases]
    done = [handle.result(60) for handle in handles]
    return [(ids_of(c), [t.logprob for t in c.tokens]) for c in done]


def test_prompts_past_a_cached_prefix_answer_as_computed_whole(new_engine) -> None:
    params = GenerationParams(max_new_tokens=10, logprobs=1)
    cold = new_engine(max_batch=8, prefix_cache_tokens=0)
    expected = [answers(cold, [case], params)[0] for case in CASES]  # each alone, every token computed
    prefills = Prefills()
    warm = new_engine(max_batch=8, observer=prefills)
    alone = [answers(warm, [case], params)[0] for case in CASES]  # the later ones start from earlier prompts
    cached_alone = prefills.cached
    together = answers(warm, CASES, params)  # one prefill: rows with different cached lengths and adapters
    for got in (alone, together):
        assert [ids for ids, _ in got] == [ids for ids, _ in expected]
        for (_, logprobs), (_, want) in zip(got, expected, strict=True):
            assert logprobs == pytest.approx(want, abs=1e-4)
    assert cached_alone > 0 and prefills.cached > cached_alone  # the cache was really used, both ways
    assert len({tuple(ids) for ids, _ in expected}) >= 3, "the prompts and adapters must answer differently"


def test_an_adapter_attached_while_serving_empties_the_cache(new_engine, adapter_dirs) -> None:
    from smoltune.serve.engine import Adapter

    engine = new_engine(max_batch=2)
    engine.submit(engine.encode(CASES[0][0]), "left", GenerationParams(max_new_tokens=2)).result(60)
    assert engine._loop.prefix.tokens > 0
    engine.add_adapter(Adapter("third", adapter_dirs["right"], "alpaca"))
    assert engine._loop.prefix.tokens == 0


def test_no_cache_when_asked(new_engine, lively_dir: Path) -> None:
    assert new_engine(prefix_cache_tokens=0)._loop.prefix is None
    assert new_engine(kv_budget_tokens=4000)._loop.prefix.max_tokens == 1000


def test_a_cached_and_an_uncached_prompt_prefilled_together_keep_the_batch_narrow(new_engine) -> None:
    """One prefill with a row whose long prompt is cached and a row with nothing cached (padding before both
    parts): the same answers as computed whole, and the running batch no wider than its longest row."""
    import torch

    from tests.serve.test_engine import Gate

    long = SHARED * 3 + "Now 8 and 9."
    other = "Hi there, a prompt of its own that shares nothing: " + "7 and 5, " * 6
    params = GenerationParams(max_new_tokens=6, logprobs=1)
    cold = new_engine(max_batch=4, prefix_cache_tokens=0)
    expected = [answers(cold, [case], params)[0] for case in ((long, "left"), (other, "right"))]
    gate = Gate()
    warm = new_engine(max_batch=4, observer=gate)
    answers(warm, [(long, "left")], params)  # kept
    gate._tokens, gate.hold_after = 0, 3
    running = warm.submit(warm.encode("Hi"), None, GenerationParams(max_new_tokens=20))
    assert gate.held.wait(30)  # the loop is mid-step: the next two join it in one prefill
    held, gate.held, gate.release, gate.hold_after = gate.release, threading.Event(), threading.Event(), 5
    handles = [warm.submit(warm.encode(p), a, params) for p, a in ((long, "left"), (other, "right"))]
    held.set()
    assert gate.held.wait(30)  # they joined: the first step with them is under way
    batch = warm._loop._batch
    longest = max(len(warm.encode(long)), len(warm.encode(other))) + 3
    width, dtype = batch.length, batch.mask.dtype
    gate.release.set()
    done = [handle.result(60) for handle in handles]
    running.result(60)
    assert width <= longest and dtype == torch.long
    assert [(ids_of(c), pytest.approx([t.logprob for t in c.tokens], abs=1e-4)) for c in done] == expected
