"""Held-out eval loss: the mean cross-entropy over answer tokens (prompt tokens masked exactly as in training).

python -c "from smoltune.evaluate.loss import mean_answer_loss; help(mean_answer_loss)"

Computed like the training's fast path: rows shortest first in batches, the shared template prefix once
(smoltune.evaluate.prefix), and the LM head (a 49k-vocabulary matmul for SmolLM2) only at positions whose next
token is labelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smoltune.data.tokens import IGNORE_INDEX
from smoltune.evaluate.prefix import PrefixBatcher, common_prefix_length, length_sorted_batches


def first_label(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def mean_answer_loss(
    model: Any, examples: list[dict], pad_id: int, batch_size: int, on_batch: Callable[[], None] = lambda: None
) -> float:
    """Token-weighted mean cross-entropy over label positions that are not IGNORE_INDEX."""
    import torch
    import torch.nn.functional as F

    from smoltune.train.packing import backbone_and_head

    rows = [e["input_ids"] for e in examples]
    if not rows:
        return float("nan")
    # The prefix ends before the token that predicts a row's first label, so every labelled logit is computed.
    shared = common_prefix_length(rows, min(first_label(e["labels"]) for e in examples) - 1)
    batcher = PrefixBatcher(model, rows[0][:shared], pad_id)
    backbone, head = backbone_and_head(model)
    total_loss, total_tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for indices in length_sorted_batches([len(r) for r in rows], batch_size):
            batch = batcher.batch([rows[i] for i in indices])
            labels = torch.full_like(batch.input_ids, IGNORE_INDEX)
            for slot, i in enumerate(indices):  # after the prefix, each row's rest is right-aligned
                rest = examples[i]["labels"][batch.prefix :]
                labels[slot, labels.shape[1] - len(rest) :] = torch.tensor(rest)
            hidden = backbone(
                input_ids=batch.input_ids[:, batch.prefix :],
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                past_key_values=batch.past_key_values,
                use_cache=batch.past_key_values is not None,
            ).last_hidden_state
            targets = labels[:, batch.prefix + 1 :]
            labelled = targets != IGNORE_INDEX
            logits = head(hidden[:, :-1][labelled])
            total_loss += F.cross_entropy(logits.float(), targets[labelled], reduction="sum").item()
            total_tokens += int(labelled.sum())
            on_batch()
    return total_loss / max(total_tokens, 1)
