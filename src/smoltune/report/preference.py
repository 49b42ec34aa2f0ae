"""The report's preference-tuning section: what DPO bought over SFT, measured on held-out pairs and rows. Pure.

python -c "from smoltune.report.preference import preference_section; help(preference_section)"
"""

from __future__ import annotations

from typing import Any

from smoltune.report.tables import as_percent, markdown_table

# The two kinds of built-in pair (smoltune.preference.evaluate.accuracy_by_kind), as the report names them.
KIND_NAMES = {
    "own_wrong": "rejected = SFT's own wrong answer",
    "stand_in": "SFT was right, a wrong answer stands in",
}


def _pairs_lines(p: dict[str, Any]) -> list[str]:
    pairs, gate = p["pairs"], p["validation"]
    lines = [
        f"- pairs: {pairs['pairs']} from `{pairs['source']}`, shape **{pairs['shape']}** ({pairs['identity']}); "
        f"{p['train_pairs']} trained on, {p['eval_pairs']} held out",
        f"- gate: {len(gate['checks'])} Great Expectations checks passed on {gate['row_count']} pairs",
    ]
    if pairs.get("on_policy"):
        lines.append(f"- {pairs['on_policy']} rejected answers are the SFT model's own wrong answers (on-policy)")
    if p.get("split_note"):
        lines.append(f"- note: {p['split_note']}")
    return lines


def _training_lines(p: dict[str, Any]) -> list[str]:
    train, settings = p["train"], p["train"]["settings"]
    reference = p.get("reference")
    ref = (
        f"precomputed once ({reference['pairs']} pairs, {reference['seconds']:.1f} s, {reference['precision']})"
        if reference
        else "a second forward pass every step"
    )
    losses = train["losses"]
    return [
        f"- TRL DPOTrainer, loss {', '.join(settings['loss_type'])}, beta {settings['beta']}, "
        f"lr {settings['learning_rate']}, {train['steps']} steps; the SFT adapter trained further, the SFT model "
        "as the reference",
        f"- reference log-probs: {ref}",
        f"- {train['train_seconds']:.1f} s, {train['tokens_per_second']:.1f} real tokens/s, {train['precision']}, "
        f"peak {train['peak_memory_mb']:.0f} MiB; loss {losses[0]:.4f} -> {losses[-1]:.4f}"
        if losses
        else "",
    ]


def _verdict(ev: dict[str, Any]) -> str:
    sft, dpo = ev["accuracy"].get("sft"), ev["accuracy"].get("dpo")
    if sft is None or dpo is None:
        return "The held-out rows have no checkable answers: accuracy is not compared."
    if dpo >= sft:
        return (
            f"DPO kept or raised checkable accuracy on the SFT held-out rows ({as_percent(sft)} -> {as_percent(dpo)})."
        )
    return (
        f"**DPO lowered checkable accuracy on the SFT held-out rows** ({as_percent(sft)} -> {as_percent(dpo)}): "
        "the preference pairs did not carry over to these questions."
    )


def _pairs(count: int) -> str:
    return f"{count} pair" if count == 1 else f"{count} pairs"


def held_out_pairs_table(ev: dict[str, Any]) -> str:
    """Reward accuracy (apart for each kind of built-in pair, where known), margin and log-prob changes."""
    kinds = ev.get("reward_accuracy_by_kind") or {}
    return markdown_table(
        ["held-out pairs", "value"],
        [
            ["reward accuracy", as_percent(ev["reward_accuracy"])],
            *(
                [f"reward accuracy, {KIND_NAMES[kind]} ({_pairs(k['pairs'])})", as_percent(k["reward_accuracy"])]
                for kind, k in kinds.items()
            ),
            ["mean reward margin", f"{ev['reward_margin']:.4f}"],
            ["log p(chosen) change", f"{ev['chosen_logp_change']:+.3f}"],
            ["log p(rejected) change", f"{ev['rejected_logp_change']:+.3f}"],
        ],
    )


def preference_section(p: dict[str, Any]) -> str:
    """Pairs, training, then DPO against SFT: reward accuracy and margin on held-out pairs, and base / SFT / DPO
    on the SFT held-out rows."""
    ev = p["eval"]
    pairs_table = held_out_pairs_table(ev)
    rows_table = markdown_table(
        ["SFT held-out rows", "base", "SFT", "DPO"],
        [
            ["eval loss", *(f"{ev['eval_loss'][k]:.4f}" for k in ("base", "sft", "dpo"))],
            [
                f"accuracy ({ev['checked_rows']} checkable)",
                *(as_percent(ev["accuracy"].get(k)) for k in ("base", "sft", "dpo")),
            ],
        ],
    )
    promotion = [
        f"- promotion, {'DPO' if i else 'SFT'}: {'promoted' if d['promoted'] else 'not promoted'} ({d['reason']})"
        for i, d in enumerate(p.get("promotion") or [])
    ]
    lines = [line for line in _pairs_lines(p) + _training_lines(p) + promotion if line]
    return "## Preference tuning (DPO)\n\n" + "\n".join(lines) + f"\n\n{pairs_table}\n\n{rows_table}\n\n{_verdict(ev)}"
