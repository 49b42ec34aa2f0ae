"""Shared-prefix caching for evaluation: the prompt prefix every row starts with is run once, not once per row.

    python -c "from smoltune.evaluate.prefix import PrefixBatcher; help(PrefixBatcher)"

Why: every evaluation prompt starts with the same template text (the Alpaca preamble is 33 of the seed rows'
60 prompt tokens; a chat template's system prompt likewise), and a forward over a prompt costs about
2·N FLOP per token (N = 134M for SmolLM2-135M). Running that prefix once and copying its key/value cache to
every row (a memory copy of 2·layers·prefix·kv_width values per row, about 1 MB for the seed model) saves
about half of the evaluation's prefill compute. vLLM calls this automatic prefix caching; transformers has
the pieces (a `DynamicCache` passed to `generate`) but not the automation, hence this module.

Layout of a batch: `[shared prefix][left padding][rest of the row]`. The prefix comes from the cache; the
padding is masked; position ids count only unmasked tokens (as `generate` derives them from the attention
mask), so each row sees exactly the positions and keys it would see alone. Tested against plain padded
batches in tests/evaluate/test_evaluation_speed.py.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: importing the stage modules stays fast
    import torch


def common_prefix_length(rows: list[list[int]], limit: int) -> int:
    """Length of the token prefix all `rows` share, at most `limit` (callers keep at least one token per row
    outside the prefix: generation and loss both need logits from it)."""
    if not rows:
        return 0
    return min(len(os.path.commonprefix(rows)), max(limit, 0))


@dataclass
class PrefixBatch:
    input_ids: torch.Tensor  # (rows, prefix + width): prefix, left padding, the rest of each row
    attention_mask: torch.Tensor  # 0 on the padding
    position_ids: torch.Tensor  # positions of the tokens after the prefix, counting unmasked tokens only
    past_key_values: Any  # the prefix's cache, copied for every row; None without a prefix
    prefix: int  # tokens served from the cache


class PrefixBatcher:
    """Batches of token rows that share a prefix, the prefix computed once by `model`."""

    def __init__(self, model: Any, prefix_ids: list[int], pad_id: int) -> None:
        self.prefix_ids, self.pad_id = prefix_ids, pad_id
        self.device = next(model.parameters()).device
        import torch

        self.cache = None
        if prefix_ids:
            with torch.inference_mode():
                ids = torch.tensor([prefix_ids], device=self.device)
                self.cache = model(input_ids=ids, use_cache=True).past_key_values

    def batch(self, rows: list[list[int]]) -> PrefixBatch:
        """`rows` (each starting with the prefix) laid out after the cached prefix."""
        import torch

        prefix = len(self.prefix_ids)
        rests = [row[prefix:] for row in rows]
        width = max(len(rest) for rest in rests)
        ids = torch.full((len(rows), prefix + width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        if prefix:
            ids[:, :prefix] = torch.tensor(self.prefix_ids)
            mask[:, :prefix] = 1
        for i, rest in enumerate(rests):
            ids[i, prefix + width - len(rest) :] = torch.tensor(rest)
            mask[i, prefix + width - len(rest) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix:]
        past = None
        if self.cache is not None:
            past = copy.deepcopy(self.cache)
            past.batch_repeat_interleave(len(rows))
        return PrefixBatch(ids.to(self.device), mask.to(self.device), positions.to(self.device), past, prefix)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of `batch_size`, shortest rows first, so a batch pads to rows of similar length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
