"""How many KV-cache tokens the engine may hold, and whether one more request fits.

The decode batch keeps every row left-padded to the longest live row (`batch.py`), so its cache takes
(rows x longest row) token slots, not the sum of the rows' lengths. A request is admitted only if, with every
request already admitted (running or queued), the worst case still fits: min(requests, max_batch) rows of the
longest admitted request's prompt + max_new_tokens. Rows only ever leave or grow up to that length, so once
admitted a request can never push the cache past the budget; one that cannot fit is refused at once (503)
instead of being killed for memory halfway through.
"""

from __future__ import annotations

from typing import Any

# Share of the memory free at start-up the KV cache may take; the rest is for activations, the logits of a
# prompt's prefill (prompt x vocab floats when echoing) and the copy made while a new row is merged in.
MEMORY_SHARE = 0.4


def kv_bytes_per_token(config: Any, itemsize: int) -> int:
    """Keys and values of every layer for one token."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * itemsize


def default_kv_budget(model: Any) -> int:
    """Tokens that MEMORY_SHARE of the device's free memory holds, halved for the copy a merge makes."""
    import psutil
    import torch

    if model.device.type == "cuda":
        free = torch.cuda.mem_get_info(model.device)[0]
    else:
        free = psutil.virtual_memory().available
    per_token = kv_bytes_per_token(model.config, model.dtype.itemsize)
    return max(int(free * MEMORY_SHARE / (2 * per_token)), 1)


def footprint(lengths: list[int], max_batch: int) -> int:
    """Worst-case token slots of these requests (prompt + max_new_tokens each) in a padded batch."""
    return min(len(lengths), max_batch) * max(lengths, default=0)
