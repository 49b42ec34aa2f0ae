"""Packed-row attention in one kernel call per layer: FlashAttention-2's varlen kernel or flex_attention with a
document mask, chosen once per training by `train.speed.segment_kernel` (resolve_segment_kernel).

    python -c "from smoltune.train.segment_kernels import resolve_segment_kernel; help(resolve_segment_kernel)"

Why: the per-row path (smoltune.train.packing) runs one attention call per row in every layer. On a CPU that
is the fast way (each call is a few large matmuls, and flex_attention has no CPU backward in torch 2.14). On a
GPU the seed job's packed step (8 rows of about 70 tokens, 30 layers) would launch 240 small attention kernels
forward and as many backward, each far too small to fill the card, and slicing the rows needs their edges on
the host. Both kernels here take the whole packed sequence at once and read the row boundaries on the device;
the boundaries themselves are computed on the host by the collator (packing.BoundaryCollator), before the
batch goes to the GPU, so no layer ever waits on a device-to-host read. Work is O(sum of row lengths squared)
in both, as in the per-row path, never O(total squared):
- flash: `flash_attn_varlen_func` with the cumulative row lengths (`cu_seqlens`), grouped-query attention
  native. Needs the flash-attn package, an Ampere or newer card and 16-bit inputs.
- flex: torch's `flex_attention` (compiled to a Triton kernel, through transformers' own wrapper) with a
  BlockMask that skips every 128x128 block outside a row; the mask is built once per batch on the device and
  shared by all layers.

Why `auto` takes flash but not flex: flash-attn is a prebuilt kernel, ready at the first step. flex must be
compiled, forward and backward, once per process and again when the packed length first changes (automatic
dynamic shapes); not yet measured on a GPU (its compile time on a CPU: docs/benchmarks.md), against the
per-row launches it saves: for the seed job (60 steps, about 500 tokens a step) about
480 small SDPA launches a step, microseconds each on a modern GPU, and with the edges already on the host they
never wait. So flex is for long jobs and many rows a step, and is asked for by name until `make gpu-check`
(which times both on the seed job) measures where it pays. (On a CPU the compiled forward also fails to
recompile for a second length in torch 2.14.)
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import torch

from smoltune.errors import ConfigError
from smoltune.machine import AMPERE, cuda_capability

Kernel = Literal["rows", "flex", "flash"]  # train.speed.segment_kernel without "auto"
ROWS_ON_CPU = "on the CPU: one attention call per row (flex_attention has no CPU backward, flash-attn is CUDA only)"


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def kernel_problems(kernel: str, device: str, precision: str) -> list[str]:
    """Why `kernel` cannot train here (empty when it can)."""
    problems = []
    if kernel in ("flex", "flash") and device != "cuda":
        problems.append(f"train.speed.segment_kernel={kernel} needs a CUDA GPU; this machine trains on {device}")
    if kernel == "flash" and not installed("flash_attn"):
        problems.append("train.speed.segment_kernel=flash needs the flash-attn package (pip install flash-attn)")
    if kernel == "flash" and device == "cuda" and (card := cuda_capability()) < AMPERE:
        # FlashAttention-2 is built for Ampere and newer; the seed's T4 (7.5) and a V100 (7.0) have no kernel.
        problems.append(
            f"train.speed.segment_kernel=flash needs an Ampere or newer GPU (compute capability 8.0+); this card "
            f"is {card[0]}.{card[1]}"
        )
    if kernel == "flash" and precision not in ("bf16", "fp16"):
        problems.append(f"train.speed.segment_kernel=flash needs bf16 or fp16 training, not {precision}")
    if kernel == "flex" and device == "cuda" and not installed("triton"):
        problems.append("train.speed.segment_kernel=flex needs Triton (torch.compile's GPU backend)")
    return problems


def resolve_segment_kernel(requested: str, device: str, precision: str) -> tuple[Kernel, str]:
    """(kernel, reason) for packed rows. `auto`: FlashAttention-2 on CUDA when flash-attn is installed and the
    training is 16-bit, else per-row calls (flex only by name: its compile time, above).
    A kernel set by name that cannot run here is a ConfigError naming why, before any model is loaded."""
    if requested != "auto":
        if problems := kernel_problems(requested, device, precision):
            raise ConfigError(problems)
        return requested, "set by train.speed.segment_kernel"  # type: ignore[return-value]
    if device != "cuda":
        return "rows", ROWS_ON_CPU
    if not kernel_problems("flash", device, precision):
        return "flash", "auto on CUDA: FlashAttention-2 varlen (flash-attn installed)"
    why = "; ".join(kernel_problems("flash", device, precision))
    return "rows", f"auto on CUDA: one SDPA call per row ({why}; flex is asked for by name, see the module's doc)"


def attention_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.dtype:
    """The one dtype a kernel gets q, k and v in. Under autocast they can differ (PEFT upcasts norms, so q and k
    may arrive fp32 beside a 16-bit v), which flex_attention refuses and flash-attn cannot take: the autocast
    dtype then, as transformers casts for its own kernels; without autocast the widest of the three."""
    dtypes = {query.dtype, key.dtype, value.dtype}
    device = query.device.type
    if torch.is_autocast_enabled(device) and (len(dtypes) > 1 or torch.float32 in dtypes):
        return torch.get_autocast_dtype(device)
    if len(dtypes) == 1:
        return query.dtype
    return torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)


def flash_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    boundaries: torch.Tensor,
    longest: int,
    scale: float,
    dropout: float,
) -> torch.Tensor:
    """Causal attention of each packed row by `flash_attn_varlen_func`: (1, heads, T, d) in, (1, T, heads, d) out.
    Inputs that arrive in fp32 (norms upcast by PEFT) are cast to the autocast dtype, as transformers does."""
    from flash_attn import flash_attn_varlen_func

    dtype = attention_dtype(query, key, value)
    if dtype == torch.float32:  # flash-attn computes in 16 bits only
        dtype = torch.bfloat16
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (query, key, value))  # (T, heads, d): flash's layout
    out = flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=boundaries,
        cu_seqlens_k=boundaries,
        max_seqlen_q=longest,
        max_seqlen_k=longest,
        dropout_p=dropout,
        softmax_scale=scale,
        causal=True,
    )
    return out.to(query.dtype).unsqueeze(0)


class DocumentMasks:
    """The BlockMask of the batch being computed: built by the first layer, reused by the others (the same
    boundaries tensor reaches every layer), replaced when a new batch arrives. One entry: batches come one at
    a time, and holding the tensor keeps the identity check sound."""

    def __init__(self) -> None:
        self.boundaries: torch.Tensor | None = None
        self.mask: Any = None

    def for_rows(self, boundaries: torch.Tensor, tokens: int) -> Any:
        if self.boundaries is not boundaries:
            self.mask, self.boundaries = document_mask(boundaries, tokens), boundaries
        return self.mask


def document_mask(boundaries: torch.Tensor, tokens: int) -> Any:
    """flex_attention's BlockMask for causal attention inside each row of a packed sequence: token i's row is
    the number of row ends at or before it (computed on the device, no host read)."""
    from torch.nn.attention.flex_attention import create_block_mask

    row = torch.searchsorted(boundaries[1:].contiguous(), torch.arange(tokens, device=boundaries.device), right=True)

    def same_row_causal(batch: Any, head: Any, q: Any, kv: Any) -> Any:
        return (row[q] == row[kv]) & (q >= kv)

    return create_block_mask(same_row_causal, None, None, tokens, tokens, device=boundaries.device)


DOCUMENT_MASKS = DocumentMasks()


def flex_rows(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, boundaries: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention of each packed row by flex_attention: (1, heads, T, d) in, (1, T, heads, d) out.
    transformers' wrapper compiles flex_attention once per process (eager on a CPU: forward only)."""
    from transformers.integrations.flex_attention import flex_attention_forward

    mask = DOCUMENT_MASKS.for_rows(boundaries, query.shape[2])
    dtype = attention_dtype(query, key, value)
    q, k, v = (t.to(dtype) for t in (query, key, value))
    out, _ = flex_attention_forward(module, q, k, v, mask, scaling=scale)
    return out.to(query.dtype)
