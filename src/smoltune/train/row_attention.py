"""Causal attention over one packed row, by whichever kernel is faster on this machine for this dtype and shape.

    python -c "from smoltune.train.row_attention import faster_kernel; help(faster_kernel)"

Why: torch's CPU SDPA (its flash-attention kernel) is the faster choice in fp32 but can be slower than three
plain ops in bf16 (docs/benchmarks.md has the figures), because its bf16 path does not reach the matrix units
the way a bf16 matmul does. Machines differ (AMX, GPUs), so neither is hard-coded: the first packed row of each
(dtype, shape) times both, forward and backward, at the row's length class, and the faster is kept for the
machine (`$SMOLTUNE_HOME/attention_kernels.json`, when nothing else kept the CPUs busy meanwhile: about 0.3 s a
shape, once), so every process picks the same kernel for the same shape: a rerun repeats its bf16 losses, and a
DPO reference computed in one process rounds as the training in another does wherever their shapes agree.

The matmul kernel: the query heads that share a key/value head are stacked into one matmul against it (no copy
of keys or values per head), scores masked causally (or by a given additive mask), softmax in fp32, then the
values. Equal to SDPA within rounding (tests/train/test_packing.py). It keeps its (rows x heads x T x T) scores
for the backward where SDPA's flash kernel keeps one log-sum-exp per query, so `masked_attention` offers it only
while those scores stay under MATMUL_SCORES_BYTES per call.
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F

# fp32 scores per call; the kernel keeps about 1.5x that for the backward (fp32 softmax + 16-bit probabilities),
# per layer (30 in SmolLM2-135M)
MATMUL_SCORES_BYTES = 8 * 2**20
# Each kernel is timed at least this long: other processes' busy time is read in whole clock ticks (10 ms), so
# the idle check needs a window of tens of ticks
MIN_TIMING_SECONDS = 0.15


def matmul_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of (B, heads, T, d) queries over (B, kv_heads, T, d) keys and values: causal, or under `mask`
    ((B, 1, T, T), added to the scores) when one is given."""
    batch, heads, tokens, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    stacked = query.reshape(batch, kv_heads, groups * tokens, dim)  # head h reads kv head h // groups
    scores = torch.matmul(stacked, key.transpose(-1, -2)).view(batch, kv_heads, groups, tokens, tokens) * scale
    if mask is None:
        future = torch.ones(tokens, tokens, dtype=torch.bool, device=query.device).triu(1)
        scores = scores.masked_fill(future, float("-inf")).float()
    else:  # in fp32: a 16-bit mask's most negative value plus a negative score would overflow to -inf
        scores = scores.float() + mask.unsqueeze(2).float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(probs.view(batch, kv_heads, groups * tokens, tokens), value).view(batch, heads, tokens, dim)


def sdpa_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    if mask is None:
        return F.scaled_dot_product_attention(query, key, value, scale=scale, is_causal=True, enable_gqa=True)
    if query.device.type == "cuda":  # CUDA's SDPA takes its math kernel (full scores) for a mask with enable_gqa
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, enable_gqa=True)


KERNELS = {"sdpa": sdpa_attention, "matmul": matmul_attention}
# Part of the kept choices' key: raise it when a kernel's code changes, so every machine times them again
KERNELS_VERSION = "kernels v1: sdpa, matmul"


@functools.lru_cache(maxsize=64)
def faster_kernel(
    device: str,
    dtype: torch.dtype,
    heads: int,
    kv_heads: int,
    dim: int,
    tokens: int,
    rows: int = 1,
    masked: bool = False,
) -> str:
    """'sdpa' or 'matmul': whichever runs forward + backward of `rows` rows faster on this machine (best of
    several after a warm-up), causal, or under an additive mask when `masked`; measured once per machine."""
    from smoltune.files import smoltune_home
    from smoltune.machine import machine_key, measured_once

    shape = (rows, heads, kv_heads, dim, tokens)
    key = (
        f"{machine_key(torch.cuda.get_device_name() if device == 'cuda' else None)} | {dtype} | "
        f"rows, heads, kv heads, dim, tokens {shape} | {'masked' if masked else 'causal'} | {KERNELS_VERSION}"
    )

    def measure() -> str:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device, enabled=False):
            return _time_kernels(device, dtype, shape, masked)

    # Silent when not kept: an internal choice, made again by the next process (under torchrun, the ranks time
    # at once and see each other as load, so they never keep one)
    return measured_once(smoltune_home() / "attention_kernels.json", key, measure, KERNELS.__contains__)


def _time_kernels(device: str, dtype: torch.dtype, shape: tuple[int, ...], masked: bool) -> str:
    rows, heads, kv_heads, dim, tokens = shape
    mask = None
    if masked:  # a causal pattern as an additive mask: both kernels then take their masked paths
        future = torch.ones(tokens, tokens, dtype=torch.bool, device=device).triu(1)
        mask = torch.zeros(rows, 1, tokens, tokens, dtype=dtype, device=device).masked_fill(
            future, torch.finfo(dtype).min
        )
    timings = {}
    for name, kernel in KERNELS.items():
        q = torch.randn(rows, heads, tokens, dim, dtype=dtype, device=device, requires_grad=True)
        k, v = (torch.randn(rows, kv_heads, tokens, dim, dtype=dtype, device=device, requires_grad=True) for _ in "kv")
        best, attempts, began = float("inf"), 0, time.perf_counter()
        # At least 4 calls and MIN_TIMING_SECONDS a kernel: long enough for the machine's load to be told apart
        while attempts < 4 or time.perf_counter() - began < MIN_TIMING_SECONDS:
            started = time.perf_counter()
            kernel(q, k, v, dim**-0.5, mask).float().sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started) if attempts else best  # the first call warms up
            attempts += 1
        timings[name] = best
    return min(timings, key=timings.__getitem__)


def _length_class(tokens: int) -> int:
    return 1 << max(tokens - 1, 1).bit_length()  # 64, 128, 256, ...: a few measurements, not one per length


def row_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Causal attention of one row by the kernel measured faster for its dtype, heads and length class."""
    _, heads, tokens, dim = query.shape
    name = faster_kernel(query.device.type, query.dtype, heads, key.shape[1], dim, _length_class(tokens))
    return KERNELS[name](query, key, value, dim**-0.5 if scale is None else scale)


def masked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """Attention of (B, heads, T, d) queries under an additive (B, 1, T, T) mask, by the kernel measured faster
    for this shape; SDPA whenever the matmul kernel's scores would exceed MATMUL_SCORES_BYTES."""
    rows, heads, tokens, dim = query.shape
    scale = dim**-0.5 if scale is None else scale
    if rows * heads * tokens * tokens * 4 > MATMUL_SCORES_BYTES:
        return sdpa_attention(query, key, value, scale, mask)
    name = faster_kernel(query.device.type, query.dtype, heads, key.shape[1], dim, _length_class(tokens), rows, True)
    return KERNELS[name](query, key, value, scale, mask)
