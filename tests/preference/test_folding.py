"""Folding an optimizer step's DPO forwards: how many merge (a divisor of grad_accum that fits the token budget,
the largest such), when folding is refused (losses that couple a forward's pairs), and the pair lengths it uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smoltune.config import PreferenceConfig
from smoltune.preference.folding import (
    even_steps,
    fold_factor,
    folded_micro_batches,
    pair_lengths,
    pair_tokens,
    worst_forward,
)
from smoltune.preference.train import dpo_settings
from smoltune.train.precision import precision_for


@given(
    batch=st.integers(1, 8),
    accum=st.integers(1, 16),
    lengths=st.lists(st.integers(1, 600), min_size=1, max_size=40),
    budget=st.integers(1, 8192),
    padded=st.booleans(),
)
def test_the_fold_is_the_largest_divisor_that_fits(
    batch: int, accum: int, lengths: list[int], budget: int, padded: bool
) -> None:
    k = fold_factor(batch, accum, lengths, budget, padded)
    assert accum % k == 0
    assert k == 1 or worst_forward(lengths, k * batch, padded) <= budget
    assert k == 1 or even_steps(len(lengths), batch, accum, k)
    bigger = [j for j in range(k + 1, accum + 1) if accum % j == 0]
    fits = [worst_forward(lengths, j * batch, padded) <= budget for j in bigger]
    assert all(not fit or not even_steps(len(lengths), batch, accum, j) for j, fit in zip(bigger, fits, strict=True))


@pytest.mark.parametrize(
    ("pairs", "k", "processes", "even"),
    [
        (64, 4, 1, True),  # whole steps only
        (61, 2, 1, False),  # last step 5 pairs: TRL's forwards 2+2+1, folded 4+1 (the Trainer weighs forwards)
        (100, 2, 1, True),  # last step 4 pairs: 2+2 either way
        (100, 4, 1, False),
        (64, 4, 2, True),
        (72, 4, 2, False),  # two processes: 72 % 16 = 8 pairs left, 4 each: not a whole forward of 8
    ],
)
def test_an_epochs_last_step_must_split_into_whole_folded_forwards(
    pairs: int, k: int, processes: int, even: bool
) -> None:
    assert even_steps(pairs, 2, 4, k, processes) is even


def test_a_short_last_step_limits_the_fold() -> None:
    assert fold_factor(2, 4, [10] * 64, 10_000, padded=False) == 4
    assert fold_factor(2, 4, [10] * 100, 10_000, padded=False) == 2
    assert fold_factor(2, 4, [10] * 61, 10_000, padded=False) == 1


def test_the_worst_forward_draws_the_longest_pairs() -> None:
    assert worst_forward([5, 9, 2, 7], 2, padded=False) == 9 + 7  # one shared-prompt row
    assert worst_forward([5, 9, 2, 7], 2, padded=True) == 2 * 9
    assert worst_forward([5], 3, padded=False) == 5  # fewer pairs than a forward holds
    assert worst_forward([300, 300, 300], 3, padded=False) == 900  # rows of 512: a row each
    assert worst_forward([200] * 5, 5, padded=False) == 3 * 400  # rows of 400, 400, 200, padded to 400


def test_pair_tokens_count_the_shared_prompt_once() -> None:
    assert pair_tokens(70, 3, 9, share_prompt=True) == 70 + 4 + 10
    assert pair_tokens(70, 3, 9, share_prompt=False) == 2 * (70 + 10)


class CountingTokenizer:
    """A stand-in tokenizer: one token per word, one special token before each text when asked."""

    def __call__(self, texts: list[str], add_special_tokens: bool) -> dict:
        return {"input_ids": [[0] * (len(t.split()) + int(add_special_tokens)) for t in texts]}


PAIRS = [
    {"prompt": "a b c", "chosen": "x", "rejected": "y z"},
    {"prompt": "a b c d e f", "chosen": "x y", "rejected": "z"},
]


def test_pair_lengths_are_measured_with_the_tokenizer() -> None:
    assert pair_lengths(PAIRS, CountingTokenizer(), share_prompt=True) == [4 + 2 + 3, 7 + 3 + 2]
    assert pair_lengths(PAIRS, CountingTokenizer(), share_prompt=False) == [2 * (4 + 3), 2 * (7 + 3)]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, 4),  # 8 pairs of 9 and 12 tokens: 4 x 12 + 4 x 9 = 84 <= 100
        ({"max_forward_tokens": 50}, 2),  # 2 x 12 + 2 x 9 = 42
        ({"max_forward_tokens": 30}, 1),
        ({"share_prompt": False, "max_forward_tokens": 100}, 2),  # two padded rows: 4 pairs x 20 = 80, 8 x 20 = 160
        ({"share_prompt": False, "max_forward_tokens": 160}, 4),
        ({"fold_accumulation": False}, 1),
        ({"loss_type": "aot"}, 1),  # sorts the forward's pairs
        ({"loss_type": "aot_unpaired"}, 1),
        ({"sft_loss_weight": 0.5}, 1),  # a token mean over the forward
        ({"loss_type": "ipo"}, 4),  # a mean of per-pair terms
    ],
)
def test_folding_is_refused_where_it_would_change_the_loss(settings: dict, expected: int) -> None:
    pref = PreferenceConfig(batch_size=2, grad_accum=4, **{"max_forward_tokens": 100, **settings})
    assert folded_micro_batches(pref, PAIRS * 4, CountingTokenizer()) == expected


def test_a_router_loss_is_not_folded() -> None:
    """A mixture-of-experts router loss is computed over a forward's tokens: folding would change it."""
    pref = PreferenceConfig(batch_size=2, grad_accum=4)
    assert folded_micro_batches(pref, PAIRS * 4, CountingTokenizer()) == 4
    assert folded_micro_batches(pref, PAIRS * 4, CountingTokenizer(), router_loss=True) == 1


def test_no_pairs_is_no_fold() -> None:
    assert folded_micro_batches(PreferenceConfig(batch_size=2, grad_accum=4), [], CountingTokenizer()) == 1


def test_a_fold_keeps_the_pairs_per_optimizer_step() -> None:
    pref = PreferenceConfig(batch_size=2, grad_accum=4)
    plain = dpo_settings(pref, "cpu", "out", precision_for("cpu", "lora", None, "fp32"))
    folded = dpo_settings(pref, "cpu", "out", precision_for("cpu", "lora", None, "fp32"), fold=2)
    assert (plain["per_device_train_batch_size"], plain["gradient_accumulation_steps"]) == (2, 4)
    assert (folded["per_device_train_batch_size"], folded["gradient_accumulation_steps"]) == (4, 2)


def test_the_embedded_tokenizer_counts_the_builtin_pairs(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from smoltune.data.prompts import format_prompt
    from smoltune.preference.builtin import checkable_questions, plausible_wrong

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = [
        {"prompt": format_prompt(q), "chosen": q["output"], "rejected": plausible_wrong(q)}
        for q in checkable_questions(8, seed=1)
    ]
    shared, rows = pair_lengths(pairs, tokenizer, True), pair_lengths(pairs, tokenizer, False)
    prompts = [len(tokenizer(p["prompt"])["input_ids"]) for p in pairs]
    assert all(p < s < r for p, s, r in zip(prompts, shared, rows, strict=True))
