"""Choosing one row's next token and reading its log-probs, for the decode loop (`loop.py`).

Each row samples with its own `torch.Generator`, seeded from the request, so a seeded request draws the same
tokens whoever shares its batch. Log-probs are `log_softmax` of the model's raw logits, before temperature and
top_p, as vLLM reports them by default: they score what the model thinks, not the sampler's reshaped
distribution, and they equal a plain forward pass's (which is what lm-evaluation-harness compares against).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smoltune.serve.types import GenerationParams, TokenLogprob


def make_generator(seed: int | None, device: Any) -> Any:
    """The row's own random stream: `seed` when given, else fresh entropy from the OS."""
    import torch

    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def choose_token(logits: Any, params: GenerationParams, generator: Any) -> int:
    """Greedy below GREEDY_BELOW, else a draw from softmax(logits / temperature) cut to the top_p nucleus."""
    import torch

    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        probs = _nucleus(probs, params.top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def _nucleus(probs: Any, top_p: float) -> Any:
    """`probs` with only the smallest set of most likely tokens whose mass reaches top_p left (not renormalised:
    multinomial accepts unnormalised weights)."""
    import torch

    ordered, order = torch.sort(probs, descending=True)
    # A token stays when the mass before it is still short of top_p; the most likely one always stays.
    keep = (torch.cumsum(ordered, dim=-1) - ordered) < top_p
    keep[0] = True
    kept = torch.zeros_like(probs)
    kept[order[keep]] = ordered[keep]
    return kept


def scored_token(logits: Any, token_id: int, top_k: int | None, text_of: Callable[[int], str]) -> TokenLogprob:
    """`token_id` with its log-prob under `logits` and, when top_k is not None, the top_k alternatives."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return TokenLogprob(
        token_id, text_of(token_id), float(logprobs[token_id]), top_alternatives(logprobs, top_k, text_of)
    )


def top_alternatives(logprobs: Any, top_k: int | None, text_of: Callable[[int], str]) -> dict[str, float] | None:
    """{text: log-prob} of the top_k most likely tokens (None when not asked for)."""
    import torch

    if top_k is None:
        return None
    if top_k == 0:
        return {}
    values, ids = torch.topk(logprobs, top_k)
    top: dict[str, float] = {}
    for value, token in zip(values.tolist(), ids.tolist(), strict=True):
        # Two tokens can read the same (e.g. both half a character); the likelier one names the entry.
        top.setdefault(text_of(token), value)
    return top
