"""Held-out eval loss: the mean cross-entropy over answer tokens (prompt tokens masked exactly as in training).

python -c "from smoltune.evaluate.loss import mean_answer_loss; help(mean_answer_loss)"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smoltune.data.tokens import IGNORE_INDEX


def mean_answer_loss(
    model: Any, examples: list[dict], pad_id: int, batch_size: int, on_batch: Callable[[], None] = lambda: None
) -> float:
    """Token-weighted mean cross-entropy over label positions that are not IGNORE_INDEX."""
    import torch

    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):
                n = len(e["input_ids"])
                ids[i, :n], labels[i, :n], mask[i, :n] = (
                    torch.tensor(e["input_ids"]),
                    torch.tensor(e["labels"]),
                    1,
                )
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total_loss += loss.item()
            total_tokens += int((shift_labels != IGNORE_INDEX).sum())
            on_batch()
    return total_loss / max(total_tokens, 1)
