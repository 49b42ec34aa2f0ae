"""The comparison report with a DPO variant: its DPO row carries evaluate_preference's figures, is labelled as the
DPO result on top of the variant's SFT, and stays out of the seed's claims (pure functions, fixed figures)."""

from __future__ import annotations

from smoltune.report.compare import check_claims, pick_pair, preference_row, render_comparison
from tests.report.test_report import compare_rows

DPO_TRAIN = {
    "mode": "lora",
    "lora_rank": 16,
    "trainable_params": 4_884_480,
    "total_params": 139_000_000,
    "train_seconds": 30.0,
    "tokens_per_second": 80.0,
    "peak_memory_mb": 2600.0,
    "losses": [0.6931, 0.6512],
}
FIGURES = {
    "eval_pairs": 32,
    "beta": 0.1,
    "reward_accuracy": 0.75,
    "reward_margin": 0.0123,
    "chosen_logp_change": 0.5,
    "rejected_logp_change": -1.5,
    "eval_loss": {"base": 2.5, "sft": 1.75, "dpo": 1.8},
    "accuracy": {"base": 0.05, "sft": 0.12, "dpo": 0.15},
    "checked_rows": 100,
    "eval_seconds": 12.0,
}


def rows_with_dpo() -> list[dict]:
    lora, full = compare_rows()
    return [lora, preference_row("lora-r16", DPO_TRAIN, FIGURES, 18.7), full]


def test_the_dpo_row_holds_the_preference_figures() -> None:
    dpo = preference_row("lora-r16", DPO_TRAIN, FIGURES, 18.7)
    assert (dpo["variant"], dpo["stage"]) == ("lora-r16", "dpo")
    assert (dpo["eval_loss"], dpo["accuracy"]) == (1.8, 0.15)  # the DPO model on the shared held-out rows
    assert (dpo["eval_loss_sft"], dpo["accuracy_sft"]) == (1.75, 0.12)
    assert (dpo["reward_accuracy"], dpo["reward_margin"], dpo["beta"], dpo["eval_pairs"]) == (0.75, 0.0123, 0.1, 32)
    assert (dpo["final_train_loss"], dpo["train_seconds"]) == (0.6512, 30.0)  # the DPO stage's own training


def test_dpo_rows_stay_out_of_the_claims() -> None:
    lora, dpo, full = rows_with_dpo()
    assert pick_pair([lora, dpo, full]) == (lora, full)
    assert pick_pair([dpo, full]) is None  # a DPO result is not a LoRA variant to hold the claims against
    # A DPO variant's SFT row beside its twin's (the same rank): no claims between a variant and its copy.
    twin = {**lora, "variant": "lora-r16-dpo"}
    assert pick_pair([lora, twin]) is None
    assert pick_pair([{**lora, "lora_rank": 8}, lora, twin]) == ({**lora, "lora_rank": 8}, lora)


def test_render_labels_the_dpo_result_on_top_of_its_sft() -> None:
    rows = rows_with_dpo()
    text = render_comparison(rows, check_claims(rows[0], rows[2]), ("lora-r16", "full"), "cmp")
    assert "| lora-r16 (SFT) | 4,884,480 (3.51%) | 100.0 s |" in text
    assert "| lora-r16 + DPO on its SFT | 4,884,480 (3.51%) | 30.0 s | 80.0 | 2600 MiB | 18.7 MiB | " in text
    assert "| 0.6512 (DPO loss) | 1.8000 | 15.0% |" in text
    assert "| full | 134,515,008 (96.77%) |" in text
    dpo_section = text.split("## Preference tuning (DPO) on top of SFT", 1)[1]
    assert "| lora-r16 + DPO on its SFT | 0.1 | 32 | 75.0% | 0.0123 | 12.0% → 15.0% | 1.7500 → 1.8000 |" in dpo_section
    plain = compare_rows()
    assert "Preference tuning" not in render_comparison(plain, [], None, "cmp")
