"""An optimizer step's DPO forward passes folded into fewer, larger ones (`preference.fold_accumulation`).

TRL runs a step as `grad_accum` forwards of `batch_size` pairs and averages their losses. For every TRL loss that
is a mean of per-pair terms (sigmoid, ipo, hinge, ...) one forward of `k x batch_size` pairs with
`grad_accum / k` accumulation gives the same loss and gradient for the same pairs (the sampler draws the same
order whatever the batch size). Losses that couple a forward's pairs keep TRL's layout: 'aot'/'aot_unpaired' sort
the batch, 'sft' averages over the batch's tokens.

Cost model: a CPU forward of 2 pairs (~200 tokens with the shared prompt) leaves the matrix units underfed and
pays every op's fixed cost per forward; 4 pairs per forward ran the default DPO job's steps about 1.3x faster
(AVX-512/bf16 EPYC, docs/benchmarks.md). Activation memory grows with the tokens of one forward, so `k` is the
largest divisor of `grad_accum` whose `k x batch_size` pairs fit `preference.max_forward_tokens` whichever pairs
a step draws: the longest ones, laid end to end in the shared-prompt rows (padded to the longest in TRL's).
"""

from __future__ import annotations

from typing import Any

BATCH_COUPLED_LOSSES = frozenset({"aot", "aot_unpaired", "sft"})


def worst_forward(lengths: list[int], pairs: int, padded: bool) -> int:
    """Tokens of the costliest forward of `pairs` pairs: the longest ones, each padded to the longest when the
    layout pads (TRL's two rows per pair), else laid end to end (the shared-prompt rows)."""
    longest_first = sorted(lengths, reverse=True)[:pairs]
    return len(longest_first) * longest_first[0] if padded else sum(longest_first)


def fold_factor(batch_size: int, grad_accum: int, lengths: list[int], max_tokens: int, padded: bool) -> int:
    """The largest divisor k of `grad_accum` whose k x batch_size pairs fit max_tokens in any draw (at least 1)."""
    divisors = [k for k in range(1, grad_accum + 1) if grad_accum % k == 0]
    fitting = [k for k in divisors if worst_forward(lengths, k * batch_size, padded) <= max_tokens]
    return max(fitting, default=1)


def pair_tokens(prompt: int, chosen: int, rejected: int, share_prompt: bool) -> int:
    """Tokens one pair takes in a forward (end-of-sequence tokens included): one row holding the prompt once with
    the shared prompt, else two rows padded to the longer answer."""
    chosen, rejected = chosen + 1, rejected + 1
    return prompt + chosen + rejected if share_prompt else 2 * (prompt + max(chosen, rejected))


def pair_lengths(pairs: list[dict[str, Any]], tokenizer: Any, share_prompt: bool) -> list[int]:
    """Each pair's tokens in a forward, for pairs of formatted `prompt`, `chosen`, `rejected` strings."""

    def lengths(column: str, special: bool) -> list[int]:
        ids = tokenizer([str(p[column]) for p in pairs], add_special_tokens=special)["input_ids"]
        return [len(row) for row in ids]

    if not pairs:
        return [1]
    prompts, chosen, rejected = lengths("prompt", True), lengths("chosen", False), lengths("rejected", False)
    return [pair_tokens(p, c, r, share_prompt) for p, c, r in zip(prompts, chosen, rejected, strict=True)]


def folded_micro_batches(settings: Any, pairs: list[dict[str, Any]], tokenizer: Any) -> int:
    """k for a PreferenceConfig `settings` over these pairs: 1 when folding is off or the loss forbids it."""
    losses = {settings.loss_type, *(["sft"] if settings.sft_loss_weight else [])}
    if not settings.fold_accumulation or losses & BATCH_COUPLED_LOSSES or settings.grad_accum == 1:
        return 1
    lengths = pair_lengths(pairs, tokenizer, settings.share_prompt)
    padded = not settings.share_prompt
    return fold_factor(settings.batch_size, settings.grad_accum, lengths, settings.max_forward_tokens, padded)
