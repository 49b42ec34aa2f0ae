"""Causal attention over one packed row, by whichever kernel is faster on this machine for this dtype and shape.

    python -c "from smoltune.train.row_attention import faster_kernel; help(faster_kernel)"

Why: torch's CPU SDPA (its flash-attention kernel) is the faster choice in fp32 but can be slower than three
plain ops in bf16 (docs/benchmarks.md has the figures), because its bf16 path does not reach the matrix units
the way a bf16 matmul does. Machines differ (AMX, GPUs), so neither is hard-coded: the first packed row of each
(dtype, shape) times both, forward and backward, at the row's length class and keeps the faster for the process
(about 50 ms, once).

The matmul kernel: the query heads that share a key/value head are stacked into one matmul against it (no copy
of keys or values per head), scores masked causally, softmax in fp32, then the values. Equal to SDPA within
rounding (tests/train/test_packing.py).
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F


def matmul_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of (B, heads, T, d) queries over (B, kv_heads, T, d) keys and values."""
    batch, heads, tokens, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    stacked = query.reshape(batch, kv_heads, groups * tokens, dim)  # head h reads kv head h // groups
    scores = torch.matmul(stacked, key.transpose(-1, -2)).view(batch, kv_heads, groups, tokens, tokens) * scale
    future = torch.ones(tokens, tokens, dtype=torch.bool, device=query.device).triu(1)
    probs = torch.softmax(scores.masked_fill(future, float("-inf")).float(), dim=-1).to(value.dtype)
    return torch.matmul(probs.view(batch, kv_heads, groups * tokens, tokens), value).view(batch, heads, tokens, dim)


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(query, key, value, scale=scale, is_causal=True, enable_gqa=True)


KERNELS = {"sdpa": sdpa_attention, "matmul": matmul_attention}


@functools.lru_cache(maxsize=64)
def faster_kernel(device: str, dtype: torch.dtype, heads: int, kv_heads: int, dim: int, tokens: int) -> str:
    """'sdpa' or 'matmul': whichever runs forward + backward of one row faster here (best of 3 after a warm-up)."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device, enabled=False):
        return _time_kernels(device, dtype, heads, kv_heads, dim, tokens)


def _time_kernels(device: str, dtype: torch.dtype, heads: int, kv_heads: int, dim: int, tokens: int) -> str:
    timings = {}
    for name, kernel in KERNELS.items():
        q = torch.randn(1, heads, tokens, dim, dtype=dtype, device=device, requires_grad=True)
        k, v = (torch.randn(1, kv_heads, tokens, dim, dtype=dtype, device=device, requires_grad=True) for _ in "kv")
        best = float("inf")
        for attempt in range(4):
            started = time.perf_counter()
            kernel(q, k, v, dim**-0.5).float().sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started) if attempt else best
        timings[name] = best
    return min(timings, key=timings.__getitem__)


def row_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Causal attention of one row by the kernel measured faster for its dtype, heads and length class."""
    _, heads, tokens, dim = query.shape
    length_class = 1 << max(tokens - 1, 1).bit_length()  # 64, 128, 256, ...: a few measurements, not one per length
    name = faster_kernel(query.device.type, query.dtype, heads, key.shape[1], dim, length_class)
    return KERNELS[name](query, key, value, dim**-0.5 if scale is None else scale)
