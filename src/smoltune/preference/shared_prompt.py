"""DPO's chosen and rejected answers in one row that holds their shared prompt once.

TRL's DPOTrainer runs a pair as two padded rows, prompt + chosen and prompt + rejected, so the prompt, usually most
of the tokens (the built-in pairs: a ~75-token Alpaca prompt, answers of 2-12 tokens), is computed twice, plus the
padding to the batch's longest row. A token's hidden state depends only on the tokens before it, so the longest
common prefix of the two rows (the prompt, and any answer tokens they share) has the same hidden states in both.
`pack_pairs` lays each pair out as one row, [shared | chosen rest | rejected rest], with the original position ids
and a mask under which the rejected part does not see the chosen part, and several such pairs one after another in
a row (each seeing only itself), as few rows as ROW_TOKENS per row allows; `install(backbone)` makes the decoder
(the model under the LM head) compute that row and hand TRL the hidden states of both rows exactly where it reads
them, so TRL's loss, LM head, reference and metrics run unchanged.

Cost model: tokens through the decoder per pair fall from 2 x (prompt + longest answer in the batch) to prompt +
chosen + rejected (builtin pairs: ~170 -> 72 on average), padding only to the longest row. Pairs share a row
because one pair per row pads each to the batch's longest (the built-in pairs: 56-132 tokens, so ~40% of a 4-pair
forward was padding). The attention mask is a (rows, 1, T, T) tensor, so attention takes a masked path, whose cost
grows with T^2 per row; the batch therefore takes as many rows as ROW_TOKENS per row needs, balanced, so a row's
scores between unrelated pairs stay small beside its matrix products. That path is `pair_attention`: torch's CPU
SDPA with a mask was measured 2.6x slower (forward + backward, 2 rows of 100 bf16 tokens, AVX-512/bf16 EPYC) than
three plain ops, so it takes whichever kernel is faster here for the shape
(smoltune.train.row_attention.masked_attention). tests/preference/test_shared_prompt.py proves the hidden states
and the DPO losses equal to TRL's own layout.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

ROW_TOKENS = 512  # a row's tokens; a longer pair gets a row of its own


@dataclass(frozen=True)
class Packed:
    """The packed rows of a [chosen rows; rejected rows] batch and where each original position went."""

    input_ids: Any  # (rows, T)
    position_ids: Any  # (rows, T)
    allowed: Any  # (rows, T, T) bool: query may attend key
    source: Any  # (2 * pairs, L) long: the packed flat index holding each original position's hidden state


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def row_groups(lengths: list[int], capacity: int) -> list[list[int]]:
    """Pair indices in as few rows of at most `capacity` tokens as balancing finds (a pair longer than that gets
    a row of its own), balanced (longest pair first onto the least-filled row), so the rows, padded to the
    fullest, waste little; each row's pairs in batch order."""
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda j: (-lengths[j], j))
    limit = max(capacity, *lengths)
    fewest = min(len(lengths), max(1, -(-sum(lengths) // capacity)))
    for rows in range(fewest, len(lengths) + 1):  # at len(lengths) rows each pair is alone: always within limit
        groups: list[list[int]] = [[] for _ in range(rows)]
        filled = [0] * rows
        for i in order:
            emptiest = filled.index(min(filled))
            groups[emptiest].append(i)
            filled[emptiest] += lengths[i]
        if max(filled) <= limit:
            break
    return [sorted(group) for group in groups if group]


def pack_pairs(input_ids: Any, attention_mask: Any) -> Packed:
    """Pack a batch laid out as TRL lays it ([chosen rows; rejected rows], right-padded), pairs one after another
    in as few rows as ROW_TOKENS tokens per row allow (smoltune.preference.shared_prompt.row_groups)."""
    import torch

    rows, width = input_ids.shape
    pairs = rows // 2
    lengths = attention_mask.sum(-1).tolist()
    ids = input_ids.tolist()
    layouts = []
    for i in range(pairs):
        c, r = ids[i][: lengths[i]], ids[pairs + i][: lengths[pairs + i]]
        # At least one token of each answer stays unshared, so each row's last position exists in its own part.
        shared = min(_common_prefix(c, r), len(c) - 1, len(r) - 1)
        layouts.append((shared, c, r))
    sizes = [len(c) + len(r) - s for s, c, r in layouts]
    groups = row_groups(sizes, ROW_TOKENS)
    t = max(sum(sizes[i] for i in group) for group in groups)
    packed_ids = torch.zeros((len(groups), t), dtype=input_ids.dtype)
    positions = torch.zeros((len(groups), t), dtype=torch.long)
    allowed = torch.zeros((len(groups), t, t), dtype=torch.bool)
    source = torch.zeros((rows, width), dtype=torch.long)
    for row, group in enumerate(groups):
        at = 0
        for i in group:
            _place(layouts[i], i, pairs, (row, at, t), (packed_ids, positions, allowed, source))
            at += sizes[i]
        allowed[row, at:, at:] = torch.eye(t - at, dtype=torch.bool)  # padding sees itself (no empty softmax)
    return Packed(packed_ids, positions, allowed, source)


def _place(layout: tuple, i: int, pairs: int, where: tuple[int, int, int], out: tuple) -> None:
    """Write pair `i` ([shared | chosen rest | rejected rest]) at row `where[0]`, offset `where[1]`."""
    import torch

    s, c, r = layout
    row, at, t = where
    packed_ids, positions, allowed, source = out
    n = len(c) + len(r) - s
    packed_ids[row, at : at + n] = torch.tensor(c + r[s:])
    positions[row, at : at + n] = torch.tensor(list(range(len(c))) + list(range(s, len(r))))
    block = torch.ones((n, n), dtype=torch.bool).tril()
    block[len(c) :, s : len(c)] = False  # the rejected answer never sees the chosen one
    allowed[row, at : at + n, at : at + n] = block
    base = row * t + at
    source[i, : len(c)] = base + torch.arange(len(c))
    source[pairs + i, :s] = base + torch.arange(s)
    source[pairs + i, s : len(r)] = base + len(c) + torch.arange(len(r) - s)


PAIR_ATTENTION = "smoltune_pairs"  # the name registered with transformers' AttentionInterface


def pair_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None, **kwargs: Any
) -> tuple[Any, None]:
    """transformers' attention-function signature: a 4-D packed-pair mask goes to the kernel measured faster for
    its shape; anything else (no mask, dropout, a cache) to transformers' own SDPA function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from smoltune.train.row_attention import masked_attention

    plain = attention_mask is None or attention_mask.ndim != 4 or kwargs.get("dropout", 0.0)
    if plain or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    out = masked_attention(query, key, value, attention_mask[:, :, :, : key.shape[2]], scaling)
    return out.transpose(1, 2).contiguous(), None


def use_pair_attention(backbone: Any) -> None:
    """Register `pair_attention`, with SDPA's mask builder (so a 2-D padding mask still becomes one), and use it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PAIR_ATTENTION, pair_attention)
    AttentionMaskInterface.register(PAIR_ATTENTION, sdpa_mask)
    backbone.set_attn_implementation(PAIR_ATTENTION)


def install(backbone: Any) -> None:
    """Make `backbone` (the decoder under the LM head) compute DPO batches packed: called with a
    [chosen rows; rejected rows] batch, it returns hidden states of that batch's shape, real positions exact
    (padding positions hold some other row's state; TRL never reads them). Only for the DPO process, where
    every batch is one of those."""
    import torch

    use_pair_attention(backbone)
    original = backbone.forward

    def forward(self: Any, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        if input_ids is None or attention_mask is None or input_ids.shape[0] % 2 or attention_mask.ndim != 2:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        packed = pack_pairs(input_ids, attention_mask)
        device = input_ids.device
        dtype = self.get_input_embeddings().weight.dtype
        mask = torch.zeros(packed.allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~packed.allowed.to(device), torch.finfo(dtype).min)
        kwargs.pop("position_ids", None)
        out = original(
            input_ids=packed.input_ids.to(device),
            attention_mask=mask.unsqueeze(1),
            position_ids=packed.position_ids.to(device),
            **kwargs,
        )
        hidden = out.last_hidden_state
        flat = hidden.reshape(-1, hidden.shape[-1])
        out.last_hidden_state = flat[packed.source.to(device).reshape(-1)].reshape(*input_ids.shape, -1)
        return out

    backbone.forward = types.MethodType(forward, backbone)
