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
a step draws (the longest ones, in the shared-prompt rows, or padded to the longest in TRL's), and which splits an
epoch's last, short step into whole forwards (`even_steps`: otherwise the Trainer would weigh its pairs unlike
TRL's layout).
"""

from __future__ import annotations

from typing import Any

BATCH_COUPLED_LOSSES = frozenset({"aot", "aot_unpaired", "sft"})


def worst_forward(lengths: list[int], pairs: int, padded: bool) -> int:
    """Tokens of the costliest forward of `pairs` pairs: the longest ones, each padded to the longest when the
    layout pads (TRL's two rows per pair), else in the shared-prompt rows (rows x the fullest row)."""
    from smoltune.preference.shared_prompt import ROW_TOKENS, row_groups

    longest_first = sorted(lengths, reverse=True)[:pairs]
    if padded:
        return len(longest_first) * longest_first[0]
    rows = row_groups(longest_first, ROW_TOKENS)
    return len(rows) * max(sum(longest_first[i] for i in row) for row in rows)


def even_steps(n_pairs: int, batch_size: int, grad_accum: int, k: int, processes: int = 1) -> bool:
    """Whether folding k forwards keeps every step's loss: the Trainer weighs each forward of a step equally, so
    an epoch's last, short step (its leftover pairs) must split into whole folded forwards, as it does into whole
    forwards of batch_size (else TRL's weighting of its pairs and the folded one differ)."""
    leftover = n_pairs % (processes * batch_size * grad_accum)
    return leftover % (processes * batch_size * k) == 0


def fold_factor(
    batch_size: int, grad_accum: int, lengths: list[int], max_tokens: int, padded: bool, processes: int = 1
) -> int:
    """The largest divisor k of `grad_accum` whose k x batch_size pairs fit max_tokens in any draw and split the
    epoch's last step evenly (at least 1)."""
    divisors = [k for k in range(1, grad_accum + 1) if grad_accum % k == 0]
    fitting = [
        k
        for k in divisors
        if worst_forward(lengths, k * batch_size, padded) <= max_tokens
        and even_steps(len(lengths), batch_size, grad_accum, k, processes)
    ]
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

    prompts, chosen, rejected = lengths("prompt", True), lengths("chosen", False), lengths("rejected", False)
    return [pair_tokens(p, c, r, share_prompt) for p, c, r in zip(prompts, chosen, rejected, strict=True)]


def folded_micro_batches(
    settings: Any, pairs: list[dict[str, Any]], tokenizer: Any, processes: int = 1, router_loss: bool = False
) -> int:
    """k for a PreferenceConfig `settings` over these pairs: 1 when folding is off or the loss forbids it (a loss
    coupling a forward's pairs; a mixture-of-experts router loss, computed over a forward's tokens)."""
    losses = {settings.loss_type, *(["sft"] if settings.sft_loss_weight else [])}
    coupled = losses & BATCH_COUPLED_LOSSES or router_loss
    if not settings.fold_accumulation or coupled or settings.grad_accum == 1 or not pairs:
        return 1
    lengths = pair_lengths(pairs, tokenizer, settings.share_prompt)
    padded = not settings.share_prompt
    return fold_factor(
        settings.batch_size, settings.grad_accum, lengths, settings.max_forward_tokens, padded, processes
    )
