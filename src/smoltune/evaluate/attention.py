"""Decode-step attention for grouped-query models without copying the key/value cache.

    python -c "from smoltune.evaluate.attention import register_decode_attention; help(register_decode_attention)"

Why: SmolLM2 has 9 query heads over 3 key/value heads. transformers' eager and (on the CPU, with a padding
mask) SDPA paths first repeat each cached key and value head 3 times, a copy of the whole cache in every layer
at every generated token: at 100 rows and ~100 cached tokens that is 11.5M values per layer per step, a large
share of evaluation's generation time (`aten::copy_` under `repeat_kv` in torch.profiler; docs/benchmarks.md).
A decode step has one query per row, so the query heads that share a key/value head can be stacked as rows of
one matmul against the cache as it is: the same scores, the same softmax, no copy. Prompt processing (more
than one query per row) keeps transformers' SDPA, which is efficient there. Equality with SDPA is tested in
tests/evaluate/test_evaluation_speed.py.
"""

from __future__ import annotations

from typing import Any

DECODE_ATTENTION = "smoltune_decode"


def decode_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention for one query per row (B, heads, 1, d) against a cache (B, kv_heads, L, d); SDPA otherwise."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, queries, dim = query.shape
    kv_heads = key.shape[1]
    if queries != 1 or module.training or heads % kv_heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # head h reads kv head h // groups
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * (dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None:  # (B, 1, 1, L): boolean (True = attend) from sdpa_mask, or additive
        mask = attention_mask[..., -key.shape[-2] :]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (B, kv_heads, groups, d)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def register_decode_attention() -> str:
    """Register `decode_attention` with transformers (idempotent), SDPA's mask function with it; returns the
    name to load a model with (`attn_implementation=`)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    return DECODE_ATTENTION
