"""The shared-prompt layout computes what TRL's two padded rows compute: the decoder's hidden states at every
real position of both rows, whatever the prompt, answer and padding lengths (answers sharing leading tokens,
one answer a prefix of the other, a one-token answer)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from smoltune.preference.shared_prompt import install, pack_pairs


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
    pairs = random_pairs(random.Random(0), 6)
    rows, ids, mask = batch(pairs)
    packed = pack_pairs(ids, mask)
    flat_ids, flat_pos = packed.input_ids.reshape(-1), packed.position_ids.reshape(-1)
    for i, row in enumerate(rows):
        where = packed.source[i, : len(row)]
        assert flat_ids[where].tolist() == row and flat_pos[where].tolist() == list(range(len(row)))
    assert packed.input_ids.shape[0] == len(pairs)
    assert packed.input_ids.shape[1] < ids.shape[1] * 2  # fewer tokens than two padded rows per pair


@pytest.mark.parametrize("kernel", ["sdpa", "matmul"])
def test_hidden_states_equal_the_two_row_layout(
    tiny_model_dir: Path, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With either attention kernel the pair attention may pick (forced here, as another machine's timing would)."""
    import torch
    from transformers import AutoModelForCausalLM

    from smoltune.train import row_attention

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


@pytest.mark.parametrize("shape", [(3, 4), (2, 5)])
def test_other_batches_pass_through(tiny_model_dir: Path, shape: tuple[int, int]) -> None:
    """An odd batch (not a pair batch) or a 4D mask is the decoder's own call."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(3, 400, shape)
    with torch.no_grad():
        want = model.model(input_ids=ids[:3], attention_mask=torch.ones_like(ids[:3])).last_hidden_state
        install(model.model)
        got = model.model(input_ids=ids[:3], attention_mask=torch.ones_like(ids[:3])).last_hidden_state
    torch.testing.assert_close(got, want)
