"""The LM head and its cross-entropy in chunks of labelled tokens, the logits' gradient computed in the forward, so
the (labelled tokens x vocabulary) logits never exist whole. `train.speed.chunked_cross_entropy`.

    python -c "from smoltune.train.chunked_loss import linear_cross_entropy; help(linear_cross_entropy)"

Cost model, K labelled tokens, vocabulary V, hidden size d (SmolLM2: V = 49,152, d = 576; the long bench rows:
K ~ 1,400 per optimizer step). Unchunked, autograd writes and rereads K x V values five times: the head's output
(16-bit), its fp32 copy, the log-softmax (kept for the backward), the loss's gradient and the log-softmax's; at
K = 1,400 that is ~1.4 GB of memory traffic per step and ~420 MB held from forward to backward. Chunked, each
chunk's logits (`rows` x V fp32) are produced, reduced to their log-sum-exp, turned into their gradient in place
(softmax minus the one-hot target) and multiplied back into the hidden size while they are still in the CPU's
last-level cache; the backward only scales the stored (K x d) gradient. The two matmuls are the same FLOPs as
before. Measured on a 2-core AVX-512/bf16 EPYC (32 MiB L3), bf16, K = 1,430, forward and backward, best of 4 in
each of 4 invocations: 861-1,401 ms unchunked vs 607-643 ms chunked at 128 rows as written here (the chunk
size mattering little: 64-512 rows 631-796 ms with torch.logsumexp instead of the in-place log-sum-exp below).
The whole long-row step under the profiler went from 28.7 to 21.7 s with the logsumexp version
(docs/benchmarks.md).

Why by hand: Liger-Kernel's and Apple's cut-cross-entropy fused losses are Triton/CUDA kernels with no CPU build;
this is the same algorithm in plain torch ops. It applies only where it is exact: a frozen, bias-free linear
head of a model class known to use its output as the logits unchanged (no softcapping or logit scaling), which
is LoRA's case on Llama-like models; anything else takes the unchunked path (`chunkable_head`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from smoltune.data.tokens import IGNORE_INDEX

# Causal-LM classes whose forward returns the head's output unchanged as the logits (read in transformers 5's
# modeling files): the chunked loss is exact only then. Others transform them after the head (Gemma 2's
# softcapping, Cohere's and Granite's scaling, Falcon-H1's multiplier) or may (remote code), and take the
# unchunked path: always right, only slower.
PLAIN_HEAD_MODELS = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "SmolLM3ForCausalLM",
        "Phi3ForCausalLM",
        "Olmo2ForCausalLM",
        "GemmaForCausalLM",
    }
)
GPU_CHUNK_BYTES = 1 << 30  # on a GPU the bound is memory, not cache: 1 GiB of fp32 logits a chunk


def cache_size_bytes(text: str) -> int | None:
    """A sysfs cache size ("32768K", "1M", "512") in bytes; None for anything else."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    return int(digits) * scale if digits.isdigit() else None


@functools.lru_cache(maxsize=1)
def last_level_cache_bytes() -> int:
    """This CPU's largest cache in bytes (sysfs), or 32 MiB where the kernel does not say."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        with contextlib.suppress(OSError):
            sizes.append(cache_size_bytes(entry.read_text()))
    return max((size for size in sizes if size), default=32 << 20)


def chunk_rows(vocab: int, device: torch.device) -> int:
    """Labelled tokens per chunk: as many as keep one chunk's fp32 logits (the working set of its element-wise
    passes; the 16-bit matmul output beside them briefly) within the last-level cache (CPU) or 1 GiB (GPU),
    rounded down to a power of two, between 16 and 4,096."""
    budget = GPU_CHUNK_BYTES if device.type == "cuda" else last_level_cache_bytes()
    rows = max(budget // (vocab * 4), 16)
    return min(1 << (rows.bit_length() - 1), 4096)


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum over `targets` (IGNORE_INDEX ignored) of -log softmax(hidden @ weight.T)[target]; the gradient with
    respect to `hidden` only (`weight` is frozen: `chunkable_head` checks)."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int, want_grad: bool
    ) -> torch.Tensor:
        ctx.hidden_dtype = hidden.dtype  # the gradient goes back in the dtype the hidden states came in
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if want_grad else None
        for start in range(0, hidden.shape[0], rows):
            chunk = slice(start, start + rows)
            # The head's matmul in the model's dtype (under autocast, its dtype), the softmax in fp32: as the
            # unchunked path computes them.
            logits = torch.matmul(hidden[chunk], weight.t()).float()
            target = targets[chunk]
            labelled = target != IGNORE_INDEX
            index = target.clamp(min=0).unsqueeze(1)  # ignored targets point at token 0, then are masked out
            # Log-sum-exp by hand, in place (torch.logsumexp allocates a shifted copy and exponentiates it, and
            # the softmax would exponentiate again): one exp pass over the chunk serves the loss and the gradient.
            shift = logits.amax(dim=-1, keepdim=True)
            picked = logits.gather(1, index).squeeze(1) - shift.squeeze(1)
            exps = logits.sub_(shift).exp_()
            norm = exps.sum(dim=-1)
            total += torch.where(labelled, norm.log() - picked, 0.0).sum()  # where, not a product: NaN * 0 is NaN
            if grad is not None:
                exps.mul_(torch.where(labelled, norm.reciprocal(), 0.0).unsqueeze(1))  # softmax; ignored rows 0
                exps.scatter_add_(1, index, -labelled.to(exps.dtype).unsqueeze(1))  # minus the one-hot target
                grad[chunk] = torch.matmul(exps.to(weight.dtype), weight)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_total).to(ctx.hidden_dtype), None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int | None = None
) -> torch.Tensor:
    """Summed cross-entropy of the logits `hidden` (N, d) @ `weight` (V, d).T against `targets` (N,), computed
    `rows` tokens at a time (default `chunk_rows`); equal to `F.cross_entropy(..., reduction="sum")` on the full
    logits (tests/train/test_chunked_loss.py)."""
    rows = rows or chunk_rows(weight.shape[0], hidden.device)
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # cast once here, not once per chunk (an fp32 head under autocast)
        compute = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(compute), weight.to(compute)
    want_grad = torch.is_grad_enabled() and hidden.requires_grad  # no second matmul nor buffer without autograd
    return _LinearCrossEntropy.apply(hidden, weight, targets, rows, want_grad)


def unwrapped_model(model: Any) -> Any:
    """The transformers model inside a (Distributed)DataParallel and/or PEFT wrapper."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_name(base: Any, head: torch.nn.Module) -> str | None:
    return next((name for name, child in base.named_children() if child is head), None)


def chunkable_head(model: Any) -> torch.nn.Linear | None:
    """The model's LM head when the chunked loss is exact for it, else None: a model class known to return the
    head's output as its logits (PLAIN_HEAD_MODELS, transformers' own), its head a frozen nn.Linear without
    bias, hooks or a patched forward, held directly by the model (so that `head_bypassed` can swap it)."""
    base = unwrapped_model(model)
    kind = type(base)
    if kind.__name__ not in PLAIN_HEAD_MODELS or not kind.__module__.startswith("transformers.models."):
        return None
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    if head._forward_hooks or head._forward_pre_hooks or "forward" in vars(head) or _head_name(base, head) is None:
        return None
    return head


@contextlib.contextmanager
def head_bypassed(model: Any, head: torch.nn.Module) -> Iterator[None]:
    """Within: the model's forward returns, as `logits`, the final hidden states the head would have read (the
    model is still called through its own forward, so a DistributedDataParallel wrapper sees the call)."""
    base = unwrapped_model(model)
    name = _head_name(base, head)
    if name is None:
        raise ValueError("the LM head is not a direct child of the model: check chunkable_head(model) first")
    setattr(base, name, torch.nn.Identity())
    try:
        yield
    finally:
        setattr(base, name, head)
