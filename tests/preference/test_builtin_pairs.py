"""The built-in pairs: chosen is the reference answer, rejected a wrong one (the SFT model's own when it is
wrong), never a held-out question; and the pair split and the reward figures (pure)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from smoltune.data.builtin import builtin_dataset
from smoltune.evaluate.scoring import is_correct
from smoltune.preference.builtin import checkable_questions, pairs_from_answers, plausible_wrong
from smoltune.preference.evaluate import accuracy_by_kind, reward_figures
from smoltune.preference.stage import proportional_quotas, split_pairs


def test_questions_are_checkable_training_rows_only() -> None:
    held_out = {(r["instruction"], r["input"]) for r in builtin_dataset() if r["split"] == "test"}
    questions = checkable_questions(400, seed=3)
    assert len(questions) == 400 and len({q["family"] for q in questions}) >= 8
    assert all(q["check"] in ("exact", "normalised") for q in questions)
    assert not {(q["instruction"], q["input"]) for q in questions} & held_out
    assert checkable_questions(50, seed=3) == questions[:50]  # deterministic for a seed


def test_a_plausible_wrong_answer_is_never_right() -> None:
    for row in checkable_questions(2000, seed=0):
        wrong = plausible_wrong(row)
        assert wrong.strip() and is_correct(wrong, row["output"], row["check"]) is False, row


def test_rejected_is_the_models_own_answer_only_when_it_is_wrong() -> None:
    questions = checkable_questions(4, seed=1)
    answers = [
        questions[0]["output"] + "\nand more",  # right (the scorer reads the first line)
        "certainly not " + questions[1]["output"] + "\nsecond line",  # wrong
        "",  # no answer at all
        plausible_wrong(questions[3]),
    ]
    pairs = pairs_from_answers(questions, answers)
    assert [p["on_policy"] for p in pairs] == [False, True, False, True]
    assert pairs[1]["rejected"] == "certainly not " + questions[1]["output"]  # its first line
    for pair, row in zip(pairs, questions, strict=True):
        assert pair["chosen"] == row["output"]
        assert is_correct(pair["rejected"], row["output"], row["check"]) is False


def test_the_pair_split_never_puts_a_prompt_on_both_sides() -> None:
    rows = [{"instruction": f"q{i % 30}", "input": "", "chosen": "a", "rejected": "b"} for i in range(60)]
    train, held_out = split_pairs(rows, 100, 10, seed=7)
    assert len(held_out) == 10
    held = {r["instruction"] for r in held_out}
    assert train and not {r["instruction"] for r in train} & held
    assert split_pairs(rows, 100, 10, seed=7) == (train, held_out)


def test_the_held_out_pairs_mirror_the_training_mix_of_families_and_origins() -> None:
    # 12 parity pairs as the built-in job makes them: 8 on-policy (chosen "even"), 4 not (chosen "odd").
    rows = [
        {"instruction": f"q{i}", "input": "", "chosen": "even" if i < 8 else "odd", "rejected": "x",
         "family": "parity", "on_policy": i < 8}
        for i in range(12)
    ] + [{"instruction": f"s{i}", "input": "", "chosen": "a", "rejected": "b", "family": "sort", "on_policy": True}
         for i in range(12)]  # fmt: skip
    for seed in range(20):  # a plain random draw of 8 from 24 holds out 0 to 3 of the four "odd" pairs
        train, held_out = split_pairs(rows, 100, 8, seed)
        odd_held = sum(r["chosen"] == "odd" for r in held_out)
        assert len(held_out) == 8 and odd_held == 1 and sum(r["family"] == "parity" for r in held_out) == 4
        assert sum(r["chosen"] == "odd" for r in train) == 3 and len(train) == 16


def test_rows_without_strata_fields_split_at_random() -> None:
    rows = [{"instruction": f"q{i}", "input": "", "chosen": "a", "rejected": "b"} for i in range(40)]
    splits = {tuple(r["instruction"] for r in split_pairs(rows, 100, 10, seed)[1]) for seed in range(5)}
    assert len(splits) == 5 and all(len(s) == 10 for s in splits)


@given(st.lists(st.integers(0, 50), max_size=12), st.integers(0, 400))
def test_proportional_quotas_sum_to_the_total_and_stay_within_each_group(sizes: list[int], total: int) -> None:
    quotas = proportional_quotas(sizes, total)
    assert sum(quotas) == min(total, sum(sizes))
    population = sum(sizes)
    for size, quota in zip(sizes, quotas, strict=True):
        assert 0 <= quota <= size
        assert abs(quota - size * min(total, population) / population) < 1 if population else quota == 0


def test_proportional_quotas_break_exact_ties_for_the_earlier_group() -> None:
    assert proportional_quotas([2, 5, 5], 4) == [1, 2, 1]  # remainders 2/3 each: floats made it [0, 2, 2]
    assert proportional_quotas([2, 5, 5], 8) == [2, 3, 3]


def test_reward_figures() -> None:
    sft = [(-10.0, -12.0), (-5.0, -5.0)]
    dpo = [(-9.0, -14.0), (-6.0, -4.0)]  # pair 1: chosen up 1, rejected down 2; pair 2: the reverse
    figures = reward_figures(sft, dpo, beta=0.1)
    assert figures["reward_accuracy"] == 0.5
    assert math.isclose(figures["reward_margin"], (0.1 * 3 + 0.1 * -2) / 2)
    assert figures["chosen_logp_change"] == 0.0 and figures["rejected_logp_change"] == -0.5


def test_reward_accuracy_by_kind_of_pair() -> None:
    sft = [(-10.0, -12.0), (-5.0, -5.0), (-1.0, -7.0)]
    dpo = [(-9.0, -14.0), (-6.0, -4.0), (-2.0, -6.5)]  # right, wrong, wrong (the SFT model's own answer fell)
    pairs = [{"on_policy": True}, {"on_policy": True}, {"on_policy": False}]
    kinds = {k: v.model_dump() for k, v in accuracy_by_kind(pairs, sft, dpo).items()}
    assert kinds == {
        "own_wrong": {"pairs": 2, "reward_accuracy": 0.5},
        "stand_in": {"pairs": 1, "reward_accuracy": 0.0},
    }
    assert accuracy_by_kind([{}, {}, {}], sft, dpo) == {}  # users' pairs carry no such field


def test_the_report_names_each_kind_of_pair() -> None:
    from smoltune.report.preference import held_out_pairs_table

    ev = {
        "reward_accuracy": 0.75, "reward_margin": 0.05, "chosen_logp_change": -0.1, "rejected_logp_change": -0.6,
        "reward_accuracy_by_kind": {
            "own_wrong": {"pairs": 29, "reward_accuracy": 0.8276},
            "stand_in": {"pairs": 1, "reward_accuracy": 0.0},
        },
    }  # fmt: skip
    table = held_out_pairs_table(ev)
    assert "| reward accuracy, rejected = SFT's own wrong answer (29 pairs) | 82.8% |" in table, table
    assert "| reward accuracy, SFT was right, a wrong answer stands in (1 pair) | 0.0% |" in table, table


def test_answer_logps_sum_the_answer_tokens_log_probs(tiny_model_dir) -> None:  # noqa: ANN001
    import torch
    from transformers import AutoModelForCausalLM

    from smoltune.data.tokens import IGNORE_INDEX
    from smoltune.preference.evaluate import answer_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    examples = [
        {"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX] * 3 + [8, 9]},
        {"input_ids": [5, 6, 10], "labels": [IGNORE_INDEX] * 2 + [10]},
    ]
    got = answer_logps(model, examples, pad_id=0, batch_size=2)
    for example, value in zip(examples, got, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([example["input_ids"]])).logits[0], -1)
        want = sum(logp[i - 1, t].item() for i, t in enumerate(example["labels"]) if t != IGNORE_INDEX)
        assert abs(value - want) < 1e-4
