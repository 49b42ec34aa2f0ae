"""The shared-prompt layout computes what TRL's two padded rows compute: the decoder's hidden states at every
real position of both rows, whatever the prompt, answer and padding lengths (answers sharing leading tokens,
one answer a prefix of the other, a one-token answer)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smoltune.preference.shared_prompt import install, pack_pairs, row_groups


def batch(pairs: list[tuple[list[int], list[int]]]):  # noqa: ANN201
    import torch

    rows = [c for c, _ in pairs] + [r for _, r in pairs]
    width = max(map(len, rows)) + 3  # extra padding, as a longer pair elsewhere in the batch would give
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return rows, ids, mask


def random_pairs(rng: random.Random, count: int) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for _ in range(count):
        prompt = [rng.randrange(3, 500) for _ in range(rng.randint(1, 30))]
        common = [rng.randrange(3, 500) for _ in range(rng.choice([0, 0, 2]))]
        chosen = prompt + common + [rng.randrange(3, 500) for _ in range(rng.randint(1, 9))]
        rejected = prompt + common + [rng.randrange(3, 500) for _ in range(rng.randint(1, 9))]
        pairs.append((chosen, rejected))
    pairs.append(([7, 8, 9], [7, 8, 9, 10, 11]))  # chosen a prefix of rejected
    pairs.append(([7, 8, 12], [7, 8]))  # rejected a prefix of chosen
    return pairs


def test_packing_keeps_each_pairs_tokens_and_positions() -> None:
    import torch

    pairs = random_pairs(random.Random(0), 6)
    rows, ids, mask = batch(pairs)
    packed = pack_pairs(ids, mask)
    flat_ids, flat_pos = packed.input_ids.reshape(-1), packed.position_ids.reshape(-1)
    for i, row in enumerate(rows):
        where = packed.source[i, : len(row)]
        assert flat_ids[where].tolist() == row and flat_pos[where].tolist() == list(range(len(row)))
    assert packed.input_ids.numel() < ids.numel()  # fewer tokens than two padded rows per pair
    # Each pair sees only itself: no position of one pair may attend a position of another.
    owner = torch.full(packed.input_ids.shape, -1).reshape(-1)
    for i, row in enumerate(rows):
        owner[packed.source[i, : len(row)]] = i % len(pairs)
    owner = owner.view(packed.input_ids.shape)
    for r in range(owner.shape[0]):
        q, k = torch.nonzero(packed.allowed[r], as_tuple=True)
        real = (owner[r, q] >= 0) | (owner[r, k] >= 0)
        assert torch.equal(owner[r, q][real], owner[r, k][real])


@pytest.mark.parametrize(("lengths", "capacity", "expected"), [
    ([3, 3, 3], 6, [[0, 2], [1]]),
    ([7, 2, 2], 6, [[0], [1, 2]]),  # longer than a row: a row of its own
    ([1, 1, 1, 1], 512, [[0, 1, 2, 3]]),
    ([72] * 8, 512, [[0, 2, 4, 6], [1, 3, 5, 7]]),  # 576 tokens: two rows of 288, not 504 + 72 padded to 504
    ([300, 300, 300], 512, [[0], [1], [2]]),
    ([200] * 5, 512, [[0, 3], [1, 4], [2]]),  # two rows would hold 600
    ([1000, 10], 512, [[0], [1]]),
    ([], 512, []),
])  # fmt: skip
def test_pairs_share_balanced_rows(lengths: list[int], capacity: int, expected: list) -> None:
    assert row_groups(lengths, capacity) == expected


@given(st.lists(st.integers(1, 700), max_size=30), st.integers(1, 600))
def test_rows_stay_within_capacity_and_hold_every_pair(lengths: list[int], capacity: int) -> None:
    groups = row_groups(lengths, capacity)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= max(capacity, *lengths) for g in groups)


def test_long_pairs_get_a_row_each(monkeypatch: pytest.MonkeyPatch) -> None:
    from smoltune.preference import shared_prompt

    monkeypatch.setattr(shared_prompt, "ROW_TOKENS", 8)
    rows, ids, mask = batch(random_pairs(random.Random(3), 4))
    packed = pack_pairs(ids, mask)
    assert packed.input_ids.shape[0] >= 4  # 6 pairs, most over 8 tokens
    flat_ids = packed.input_ids.reshape(-1)
    for i, row in enumerate(rows):
        assert flat_ids[packed.source[i, : len(row)]].tolist() == row


@pytest.mark.parametrize(("kernel", "row_tokens"), [("sdpa", 512), ("matmul", 512), ("matmul", 40), ("sdpa", 40)])
def test_hidden_states_equal_the_two_row_layout(
    tiny_model_dir: Path, kernel: str, row_tokens: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With either attention kernel the pair attention may pick (forced here, as another machine's timing would),
    all pairs in one row or spread over several rows."""
    import torch
    from transformers import AutoModelForCausalLM

    from smoltune.preference import shared_prompt
    from smoltune.train import row_attention

    monkeypatch.setattr(shared_prompt, "ROW_TOKENS", row_tokens)

    chosen = []
    monkeypatch.setattr(row_attention, "faster_kernel", lambda *a: chosen.append(a) or kernel)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows, ids, mask = batch(random_pairs(random.Random(1), 5))
    with torch.no_grad():
        want = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        install(model.model)
        got = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert got.shape == want.shape and chosen  # the pair attention ran, by the forced kernel
    for i, row in enumerate(rows):
        torch.testing.assert_close(got[i, : len(row)], want[i, : len(row)], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [(3, 6), (3, 9)])
def test_other_batches_pass_through(tiny_model_dir: Path, shape: tuple[int, int]) -> None:
    """An odd batch (not a pair batch) is the decoder's own call, its padding mask honoured (left-padded rows)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(3, 400, shape)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    with torch.no_grad():
        want = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        install(model.model)
        got = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real])
