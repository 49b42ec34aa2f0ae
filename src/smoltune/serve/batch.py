"""The running rows' KV cache: one DynamicCache, every row left-padded to the same length, a 0/1 mask per row.

Requests that join together are prefilled together (left-padded, as `generate` pads a batch; a prompt's
padding is masked, so its logits are a plain forward pass's up to float rounding), then the rows that go on
are merged in: the shorter side is left-padded with zeros that the mask hides. Each row's
position ids count only its own real tokens, so padding never shifts a row's rotary positions. A finished row
is dropped by index, and padding columns that every remaining row has are trimmed from the left, which keeps
the cache at (rows x longest live row) tokens.
"""

from __future__ import annotations

from typing import Any


class DecodeBatch:
    def __init__(self) -> None:
        self.cache: Any = None  # transformers DynamicCache, [rows, kv heads, length, head dim] per layer
        self.mask: Any = None  # [rows, length] long: 1 where a row has a real token

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def join(self, cache: Any, mask: Any, rows: list[int]) -> None:
        """Merge `rows` of a prefilled batch (its cache and [n, length] mask, left-padded) into this one."""
        import torch

        _check_plain(cache)
        if len(rows) != mask.shape[0]:
            cache.batch_select_indices(torch.tensor(rows, device=mask.device))
            mask = mask[rows]
        if self.cache is None:
            self.cache, self.mask = cache, mask
        else:
            width = max(self.length, int(mask.shape[1]))
            pairs = list(zip(self.cache.layers, cache.layers, strict=True))
            # Built aside and swapped in afterwards, so a failure half-way leaves the running batch untouched.
            keys = [torch.cat([_left_pad(a.keys, width), _left_pad(b.keys, width)]) for a, b in pairs]
            values = [torch.cat([_left_pad(a.values, width), _left_pad(b.values, width)]) for a, b in pairs]
            joined = torch.cat([_left_pad_mask(self.mask, width), _left_pad_mask(mask, width)])
            for (layer, _), key, value in zip(pairs, keys, values, strict=True):
                layer.keys, layer.values = key, value
            self.mask = joined
        self._trim()

    def step_inputs(self, last_tokens: list[int]) -> dict[str, Any]:
        """Forward arguments for one decoding step: each row's last token at its own next position."""
        import torch

        device = self.mask.device
        mask = torch.cat([self.mask, torch.ones(self.rows, 1, dtype=self.mask.dtype, device=device)], dim=1)
        return {
            "input_ids": torch.tensor(last_tokens, device=device).unsqueeze(1),
            "attention_mask": mask,
            "position_ids": self.mask.sum(dim=1, keepdim=True),
            "past_key_values": self.cache,
            "use_cache": True,
        }

    def advance(self, inputs: dict[str, Any]) -> None:
        """After a successful step: the cache grew by one column (the forward appended it), so does the mask."""
        self.mask = inputs["attention_mask"]

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows, in this order; trim the padding they all share."""
        import torch

        if not indices:
            self.cache = self.mask = None
            return
        if len(indices) == self.rows:
            return
        index = torch.tensor(indices, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self._trim()

    def _trim(self) -> None:
        """Drop the padding columns every row has (left by rows that left, or a prefill's own padding)."""
        import torch

        start = int(torch.nonzero(self.mask.any(dim=0))[0])
        if start:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self.mask = self.mask[:, start:]


def left_aligned(cache: Any, mask: Any) -> Any:
    """Move each row's padding columns to its left, in place of `cache`'s layers; returns the matching mask. A
    prefill past cached prefixes of different lengths pads in two places (before the cached part and before the
    computed part); with all of it on the left, `_trim` can drop what rows share and a row never holds more
    columns than its own tokens plus the padding up to the longest row. Keys carry their rotary positions and a
    decoding step attends to every unmasked column, so the order of columns changes nothing else."""
    order = mask.argsort(dim=1, stable=True)  # 0s (padding) first, each part in its own order
    for layer in cache.layers:
        index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
        layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
    return mask.gather(1, order)


def is_plain(cache: Any) -> bool:
    """Whether every layer keeps its keys and values whole (sliding-window or linear-attention layers keep their
    cache in other shapes; merging or reusing them is not this)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _check_plain(cache: Any) -> None:
    if not is_plain(cache):
        raise RuntimeError("continuous batching needs a model whose layers all use full attention")


def _left_pad(states: Any, width: int) -> Any:
    import torch.nn.functional as F

    return F.pad(states, (0, 0, width - states.shape[-2], 0))


def _left_pad_mask(mask: Any, width: int) -> Any:
    import torch.nn.functional as F

    return F.pad(mask, (width - mask.shape[-1], 0))
