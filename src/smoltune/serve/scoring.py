"""The prompt's own log-probs (`echo_logprobs`) from the prefill's logits: no second forward pass.

Position i's logits predict token i + 1, so the first prompt token has no log-prob (None, as OpenAI and vLLM
report it) and each later token is scored by the logits just before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smoltune.serve.sampling import top_alternatives
from smoltune.serve.types import TokenLogprob


def prompt_logprobs(
    logits: Any, prompt_ids: list[int], top_k: int | None, text_of: Callable[[int], str]
) -> tuple[TokenLogprob, ...]:
    """One TokenLogprob per prompt token; `logits` is the prefill's [prompt length, vocab]."""
    import torch

    first = TokenLogprob(prompt_ids[0], text_of(prompt_ids[0]), None, None)
    if len(prompt_ids) == 1:
        return (first,)
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    following = torch.tensor(prompt_ids[1:], device=logprobs.device).unsqueeze(1)
    chosen = logprobs.gather(1, following).squeeze(1).tolist()
    scored = [
        TokenLogprob(token, text_of(token), value, top_alternatives(row, top_k, text_of))
        for token, value, row in zip(prompt_ids[1:], chosen, logprobs, strict=True)
    ]
    return (first, *scored)
