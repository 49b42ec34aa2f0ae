"""The LoRA-vs-full comparison: the measured table, the seed's claims checked, and the DPO result of any variant
tuned further with DPO (pure functions).

smoltune compare --config configs/compare.yaml
"""

from __future__ import annotations

from typing import Any

from smoltune.report.tables import as_percent, markdown_table


def comparison_row(name: str, summary_train: dict, evaluation: dict, saved_mb: float) -> dict[str, Any]:
    """The figures of one variant, as the table and the claims use them."""
    losses = summary_train["losses"]
    return {
        "variant": name,
        "stage": "sft",
        "mode": summary_train["mode"],
        "lora_rank": summary_train["lora_rank"],
        "trainable_params": summary_train["trainable_params"],
        "total_params": summary_train["total_params"],
        "train_seconds": summary_train["train_seconds"],
        "tokens_per_second": summary_train["tokens_per_second"],
        "peak_memory_mb": summary_train["peak_memory_mb"],
        "saved_mb": saved_mb,
        "final_train_loss": losses[-1] if losses else None,
        "eval_loss": evaluation["eval_loss_tuned"],
        "accuracy": evaluation.get("accuracy_tuned"),
        "losses": losses,
    }


def preference_row(name: str, dpo_train: dict, figures: dict, saved_mb: float) -> dict[str, Any]:
    """Variant `name`'s DPO result on top of its SFT, in comparison_row's columns (the DPO training's own figures;
    eval loss and accuracy of the DPO model on the held-out rows every variant is measured on), plus what
    evaluate_preference measured on the held-out pairs (PreferenceFigures as JSON)."""
    dpo = {"eval_loss_tuned": figures["eval_loss"]["dpo"], "accuracy_tuned": figures["accuracy"].get("dpo")}
    return comparison_row(name, dpo_train, dpo, saved_mb) | {
        "stage": "dpo",
        "eval_loss_sft": figures["eval_loss"]["sft"],
        "accuracy_sft": figures["accuracy"].get("sft"),
        "reward_accuracy": figures["reward_accuracy"],
        "reward_margin": figures["reward_margin"],
        "beta": figures["beta"],
        "eval_pairs": figures["eval_pairs"],
    }


def is_dpo(row: dict[str, Any]) -> bool:
    """A DPO result (preference_row), not a variant's SFT figures: never in the claims or the SFT loss curves."""
    return row.get("stage") == "dpo"


def _share(part: float, whole: float) -> float:
    return 1.0 - part / whole if whole else float("nan")


def check_claims(lora: dict[str, Any], full: dict[str, Any]) -> list[dict[str, Any]]:
    """The seed's claims for LoRA against full fine-tuning, each with the measured figure and a verdict."""
    if lora.get("accuracy") is not None and full.get("accuracy"):
        quality, basis = lora["accuracy"] / full["accuracy"], "held-out accuracy ratio"
    else:
        quality, basis = full["eval_loss"] / lora["eval_loss"], "eval-loss ratio (full / LoRA)"
    faster = full["train_seconds"] / lora["train_seconds"] - 1.0
    checks = [
        ("95% fewer parameters", _share(lora["trainable_params"], full["trainable_params"]), 0.95, "fewer trainable"),
        ("20–30% faster", faster, 0.20, "faster training"),
        ("90% smaller", _share(lora["saved_mb"], full["saved_mb"]), 0.90, "smaller on disk"),
        ("40% less memory", _share(lora["peak_memory_mb"], full["peak_memory_mb"]), 0.40, "less peak memory"),
        ("95–100% of full quality", quality, 0.95, basis),
    ]
    return [
        {"claim": claim, "measured": value, "threshold": threshold, "holds": round(value, 9) >= threshold, "what": what}
        for claim, value, threshold, what in checks
    ]


def pick_pair(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(LoRA r=16 or the smallest-rank LoRA, full fine-tuning or else a larger-rank LoRA) among the SFT rows, or
    None. Never two LoRAs of one rank: a DPO variant's SFT row is often its twin's, trained with the same settings."""
    sft = [r for r in rows if not is_dpo(r)]
    loras = sorted((r for r in sft if r["mode"] == "lora"), key=lambda r: r["lora_rank"])
    fulls = [r for r in sft if r["mode"] == "full"]
    if not loras:
        return None
    lora = next((r for r in loras if r["lora_rank"] == 16), loras[0])
    if fulls:
        return lora, fulls[0]
    largest = next(r for r in loras if r["lora_rank"] == loras[-1]["lora_rank"])  # the first listed of that rank
    if largest["lora_rank"] == lora["lora_rank"]:  # r=16 is the largest rank: the smallest against it
        lora = loras[0]
    return (lora, largest) if largest["lora_rank"] > lora["lora_rank"] else None


COMPARE_CURVES = "compare_losses.png"


def _claim_figure(claim: dict[str, Any]) -> str:
    """ "96.5% fewer trainable", "-12.0% faster training" (negative: slower), "97.0% (accuracy ratio)"."""
    figure = f"{claim['measured']:.1%}"
    return f"{figure} ({claim['what']})" if claim["claim"].startswith("95–100%") else f"{figure} {claim['what']}"


def _label(row: dict[str, Any], tuned: set[str]) -> str:
    """The table's name of a row: a variant tuned with DPO has two, its SFT result and the DPO one on top of it."""
    if is_dpo(row):
        return f"{row['variant']} + DPO on its SFT"
    return f"{row['variant']} (SFT)" if row["variant"] in tuned else row["variant"]


def _final_loss(row: dict[str, Any]) -> str:
    if row["final_train_loss"] is None:
        return "—"
    return f"{row['final_train_loss']:.4f}" + (" (DPO loss)" if is_dpo(row) else "")


def _preference_section(rows: list[dict[str, Any]]) -> str | None:
    """The DPO variants' figures: held-out pairs, and SFT against DPO on the held-out rows every variant shares."""
    dpo = [r for r in rows if is_dpo(r)]
    if not dpo:
        return None
    table = markdown_table(
        [
            "variant",
            "beta",
            "held-out pairs",
            "reward accuracy",
            "reward margin",
            "held-out accuracy (SFT → DPO)",
            "eval loss (SFT → DPO)",
        ],
        [
            [
                _label(r, set()),
                f"{r['beta']:g}",
                r["eval_pairs"],
                as_percent(r["reward_accuracy"]),
                f"{r['reward_margin']:.4f}",
                f"{as_percent(r['accuracy_sft'])} → {as_percent(r['accuracy'])}",
                f"{r['eval_loss_sft']:.4f} → {r['eval_loss']:.4f}",
            ]
            for r in dpo
        ],
    )
    return (
        "## Preference tuning (DPO) on top of SFT\n\n"
        "A `+ DPO on its SFT` row is that variant's SFT adapter trained further with DPO (its `preference` "
        "settings), the SFT model as the reference. Held-out accuracy and eval loss are measured on the held-out "
        "rows every variant shares; reward accuracy (held-out pairs whose chosen answer gains more reward than the "
        "rejected one) and the mean reward margin (beta × the difference of log-ratios) on preference pairs DPO "
        "never trained on. In the measured table its training figures are the DPO stage's alone, and its final "
        "loss is the DPO loss, which does not compare with the SFT losses.\n\n" + table
    )


def render_comparison(
    rows: list[dict[str, Any]], claims: list[dict[str, Any]], pair: tuple[str, str] | None, title: str
) -> str:
    """Markdown of the variant comparison: the measured table, the seed's claims, each held or not, and the DPO
    variants' results."""
    tuned = {r["variant"] for r in rows if is_dpo(r)}
    table = markdown_table(
        [
            "variant",
            "trainable params (%)",
            "training time",
            "tokens/s",
            "peak memory",
            "saved size",
            "final train loss",
            "eval loss",
            "held-out accuracy",
        ],
        [
            [
                _label(r, tuned),
                f"{r['trainable_params']:,} ({100 * r['trainable_params'] / r['total_params']:.2f}%)",
                f"{r['train_seconds']:.1f} s",
                f"{r['tokens_per_second']:.1f}",
                f"{r['peak_memory_mb']:.0f} MiB",
                f"{r['saved_mb']:.1f} MiB",
                _final_loss(r),
                f"{r['eval_loss']:.4f}",
                as_percent(r["accuracy"]),
            ]
            for r in rows
        ],
    )
    sections = [f"# {title}", "## Measured\n\n" + table, f"![Loss curves]({COMPARE_CURVES})"]
    if pair and claims:
        verdicts = markdown_table(
            ["seed claim", "measured on this run", "verdict"],
            [[c["claim"], _claim_figure(c), "holds" if c["holds"] else "does not hold"] for c in claims],
        )
        held = sum(c["holds"] for c in claims)
        sections.append(
            f"## Seed claims vs measured\n\n`{pair[0]}` against `{pair[1]}`; {held} of {len(claims)} claims hold "
            "on this run.\n\n" + verdicts
        )
    else:
        sections.append("## Seed claims vs measured\n\nNeeds a LoRA variant and a full (or larger-rank) variant.")
    preference = _preference_section(rows)
    if preference:
        sections.append(preference)
    return "\n\n".join(sections) + "\n"
