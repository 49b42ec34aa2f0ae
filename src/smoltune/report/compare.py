"""The LoRA-vs-full comparison: the measured table and the seed's claims checked (pure functions).

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
    """(LoRA r=16 or the smallest-rank LoRA, full fine-tuning or else the largest-rank LoRA), or None."""
    loras = sorted((r for r in rows if r["mode"] == "lora"), key=lambda r: r["lora_rank"])
    fulls = [r for r in rows if r["mode"] == "full"]
    if not loras or (not fulls and len(loras) < 2):
        return None
    lora = next((r for r in loras if r["lora_rank"] == 16), loras[0])
    return lora, fulls[0] if fulls else loras[-1]


COMPARE_CURVES = "compare_losses.png"


def _claim_figure(claim: dict[str, Any]) -> str:
    """ "96.5% fewer trainable", "-12.0% faster training" (negative: slower), "97.0% (accuracy ratio)"."""
    figure = f"{claim['measured']:.1%}"
    return f"{figure} ({claim['what']})" if claim["claim"].startswith("95–100%") else f"{figure} {claim['what']}"


def render_comparison(
    rows: list[dict[str, Any]], claims: list[dict[str, Any]], pair: tuple[str, str] | None, title: str
) -> str:
    """Markdown of the variant comparison: the measured table and the seed's claims, each held or not."""
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
                r["variant"],
                f"{r['trainable_params']:,} ({100 * r['trainable_params'] / r['total_params']:.2f}%)",
                f"{r['train_seconds']:.1f} s",
                f"{r['tokens_per_second']:.1f}",
                f"{r['peak_memory_mb']:.0f} MiB",
                f"{r['saved_mb']:.1f} MiB",
                "—" if r["final_train_loss"] is None else f"{r['final_train_loss']:.4f}",
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
    return "\n\n".join(sections) + "\n"
