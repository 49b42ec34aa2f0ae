"""The fast CPU training path: padding-free packed batches, attention kept inside each row, and the LM head
applied only where a label exists. Measured by `make bench` (docs/benchmarks.md).

    python -c "from smoltune.train.packing import labelled_token_loss; help(labelled_token_loss)"

- Packing: a batch's rows are concatenated into one sequence (TRL's padding-free collator) with position ids
  restarting at 0 for each row, so no compute goes to padding and the matmuls are larger.
- Segment attention: transformers' attention is replaced, for packed batches only, by causal attention inside
  each row (`cu_seq_lens_q` gives the boundaries, computed on the host by `BoundaryCollator`). A block-diagonal
  mask over the whole packed sequence costs O(total²); per-row attention costs O(Σ row²) and cannot leak
  between rows. The kernel (`train.speed.segment_kernel`): one call per row ("rows", the CPU's), or on a GPU
  one call per layer for all rows (FlashAttention-2 varlen or flex_attention, smoltune.train.segment_kernels).
- Labelled logits only: with prompt masking most positions have no label (the seed rows: 668 of 6,690 tokens
  are response), yet the 49k-vocabulary LM head and its softmax would run on every position. The loss is the
  same sum of cross-entropies over the same labelled tokens.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from smoltune.data.tokens import IGNORE_INDEX
from smoltune.train.chunked_loss import chunkable_head, head_bypassed, linear_cross_entropy, unwrapped_model
from smoltune.train.row_attention import row_attention

SEGMENT_ATTENTION = "smoltune_segments"  # the per-row kernel's name
# The other kernels' names. Not "flash"/"flex": transformers treats a name containing those as its own kernels.
ATTENTION_NAMES = {"rows": SEGMENT_ATTENTION, "flex": "smoltune_segments_doc_mask", "flash": "smoltune_segments_varlen"}
ROW_EDGES = "smoltune_row_edges"  # the boundaries as Python ints, handed to every layer's attention call
# Where some row's next token has a label: found by the collator on the host, so the loss never asks the device
# (a `nonzero` there has a data-dependent size: on a GPU it waits for the device once per forward).
LABELLED_POSITIONS = "smoltune_labelled_positions"


def segment_boundaries(position_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative row boundaries (0, end of row 1, ..., total) of one packed sequence whose positions restart at 0
    for each row; the `cu_seq_lens` convention of varlen attention kernels."""
    positions = position_ids.reshape(-1)
    starts = (positions == 0).nonzero().reshape(-1)
    end = torch.tensor([positions.numel()], device=positions.device)
    return torch.cat([starts, end]).to(torch.int32)


def segment_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    kernel: str = "rows",
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention inside each row of a packed batch (`cu_seq_lens_q` given) by `kernel`; plain SDPA
    otherwise, so generation and unpacked batches behave exactly as with `attn_implementation="sdpa"`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    boundaries = kwargs.get("cu_seq_lens_q")
    if boundaries is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if kernel == "flash":
        from smoltune.train.segment_kernels import flash_rows

        rate = dropout if module.training else 0.0
        return flash_rows(query, key, value, boundaries, kwargs["max_length_q"], scale, rate), None
    if kernel == "flex" and not (dropout and module.training):  # flex_attention has no dropout
        from smoltune.train.segment_kernels import flex_rows

        return flex_rows(module, query, key, value, boundaries, scale), None
    edges = kwargs.get(ROW_EDGES) or boundaries.tolist()
    # query: (1, heads, tokens, head_dim); key/value may have fewer heads (grouped-query attention). Rows are
    # taken by `split`, not by slicing: the backward of a slice writes into a zeroed copy of the whole tensor, so
    # R rows cost R full-size fills and adds per tensor and layer; split's backward is one concatenation.
    sizes = [end - start for start, end in zip(edges[:-1], edges[1:], strict=True)]
    parts = zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2), strict=True)
    if dropout and module.training:
        rows = [
            F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=True)
            for q, k, v in parts
        ]
    else:  # the kernel measured faster here for this dtype (smoltune.train.row_attention)
        rows = [row_attention(q, k, v, scaling) for q, k, v in parts]
    return torch.cat(rows, dim=2).transpose(1, 2).contiguous(), None


def register_segment_attention(kernel: str = "rows") -> str:
    """Register `segment_attention` with `kernel` (a key of ATTENTION_NAMES) with transformers
    (idempotent); returns the name to load models with. SDPA's mask function goes with it, so unpacked batches
    (padding, generation) are masked exactly as with `sdpa`; a packed batch's kernels ignore that mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    name = ATTENTION_NAMES[kernel]
    AttentionInterface.register(name, functools.partial(segment_attention, kernel=kernel))
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def with_segment_boundaries(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` plus the row boundaries segment attention needs, when the batch is one packed sequence (and
    does not have them yet)."""
    position_ids = inputs.get("position_ids")
    if position_ids is None or "attention_mask" in inputs or position_ids.shape[0] != 1 or "cu_seq_lens_q" in inputs:
        return inputs
    boundaries = segment_boundaries(position_ids)
    # Host integers once per batch, not a read per layer (on a GPU each read is a synchronisation); on a batch
    # still on the host (BoundaryCollator) no read at all.
    edges = tuple(boundaries.tolist())
    longest = max(end - start for start, end in zip(edges[:-1], edges[1:], strict=True))
    return {
        **inputs,
        "cu_seq_lens_q": boundaries,
        "cu_seq_lens_k": boundaries,
        "max_length_q": longest,
        "max_length_k": longest,
        ROW_EDGES: edges,
    }


class BoundaryCollator:
    """A padding-free collator whose batches carry their row boundaries, computed from the position ids while
    the batch is still on the host: the Trainer then moves `cu_seq_lens_q` to the device with the rest, and no
    kernel waits for a device-to-host read."""

    def __init__(self, collate: Any, labelled_positions: bool = False) -> None:
        self.collate = collate
        self.labelled_positions = labelled_positions  # for `labelled_token_loss`, also found on the host

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        batch = with_segment_boundaries(self.collate(rows))
        if self.labelled_positions:
            batch[LABELLED_POSITIONS] = labelled_positions(batch["labels"])
        return batch


def backbone_and_head(model: Any) -> tuple[Any, Any]:
    """The decoder stack and the LM head of a causal LM, through a PEFT wrapper if there is one (LoRA layers
    live inside the decoder's modules, so calling the decoder directly still trains them)."""
    base = unwrapped_model(model)
    return base.get_decoder(), base.get_output_embeddings()


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose next token has a label in some row of the batch."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().reshape(-1)


def labelled_token_loss(
    model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None, chunked: bool = False
) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens of `inputs`, computing logits only where the next
    token has a label. Equals the model's own causal-LM loss (same shift, same IGNORE_INDEX); divided by
    `num_items_in_batch` when the Trainer gives it (gradient accumulation), else by the labelled count.

    The model is called through its own forward (`logits_to_keep` = the positions where some row has a label),
    not decoder and head separately: a DistributedDataParallel wrapper syncs gradients only for what goes
    through its forward. A packed batch (one row) keeps exactly its labelled positions; a padded batch the
    union over its rows, where a row's unlabelled positions are ignored. `chunked`: the head and the loss by
    smoltune.train.chunked_loss where that is exact for this model's head (the same loss, less memory traffic)."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = inputs.pop(LABELLED_POSITIONS, None)
    if keep is None:  # a batch from another collator: found here (on a GPU, one wait for the device)
        keep = labelled_positions(labels)
    targets = labels[:, 1:]
    labelled = targets != IGNORE_INDEX
    # Unlabelled targets among the kept positions (kept for another row of a padded batch) are ignored rather
    # than masked out: a boolean index has a data-dependent size, which on a GPU waits for the device.
    kept_targets = targets[:, keep].flatten()
    head = chunkable_head(model) if chunked else None
    if head is not None:
        with head_bypassed(model, head):
            hidden = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        loss_sum = linear_cross_entropy(hidden.flatten(0, 1), head.weight, kept_targets)
    else:
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        loss_sum = F.cross_entropy(
            logits.flatten(0, 1).float(), kept_targets, ignore_index=IGNORE_INDEX, reduction="sum"
        )
    count = num_items_in_batch if num_items_in_batch is not None else labelled.sum().clamp(min=1)
    return loss_sum / count
