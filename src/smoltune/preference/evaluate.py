"""Held-out evaluation of preference tuning: the DPO model against its reference (the SFT model).

    python -c "from smoltune.preference.evaluate import reward_figures; help(reward_figures)"

On held-out pairs: DPO's implicit reward of an answer is beta * (log p_dpo - log p_sft); reward accuracy is the
share of pairs whose chosen answer gains more than the rejected one, the margin the mean difference. On the
SFT held-out rows: eval loss and checkable accuracy of DPO, beside base and SFT as the SFT evaluation measured
them (same rows, same code, same precision). The eval prompts answered by all three.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from statistics import mean
from typing import Any

from smoltune.config import EvalConfig
from smoltune.data.tokens import tokenize_example
from smoltune.evaluate.scoring import MATCH_SCORES
from smoltune.evaluate.stage import held_out, measure
from smoltune.files import read_jsonl
from smoltune.records import EvalFigures, KindAccuracy, PreferenceFigures


def answer_logps(model: Any, examples: list[dict], pad_id: int, batch_size: int) -> list[float]:
    """Sum of the log-probabilities of each example's labelled (answer + EOS) tokens; the LM head (a 49k-word
    vocabulary for SmolLM2) runs only where the next token is labelled, as in training."""
    import torch

    from smoltune.data.tokens import IGNORE_INDEX
    from smoltune.train.packing import backbone_and_head

    backbone, head = backbone_and_head(model)
    sums: list[float] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.tensor([e["input_ids"] + [pad_id] * (width - len(e["input_ids"])) for e in batch])
            labels = torch.tensor([e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in batch])
            mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
            hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
            targets = labels[:, 1:]
            labelled = targets != IGNORE_INDEX
            picked = torch.log_softmax(head(hidden[labelled]).float(), -1).gather(-1, targets[labelled].unsqueeze(-1))
            rows = torch.arange(len(batch)).unsqueeze(1).expand_as(targets)[labelled]
            sums.extend(torch.zeros(len(batch)).index_add_(0, rows, picked.squeeze(-1)).tolist())
    return sums


def reward_figures(sft: list[tuple[float, float]], dpo: list[tuple[float, float]], beta: float) -> dict[str, float]:
    """Reward accuracy, mean margin and mean log-prob changes from (chosen, rejected) log-probs. Pure."""
    chosen = [beta * (d[0] - s[0]) for s, d in zip(sft, dpo, strict=True)]
    rejected = [beta * (d[1] - s[1]) for s, d in zip(sft, dpo, strict=True)]
    return {
        "reward_accuracy": round(mean(float(c > r) for c, r in zip(chosen, rejected, strict=True)), 4),
        "reward_margin": round(mean(c - r for c, r in zip(chosen, rejected, strict=True)), 5),
        "chosen_logp_change": round(mean(d[0] - s[0] for s, d in zip(sft, dpo, strict=True)), 5),
        "rejected_logp_change": round(mean(d[1] - s[1] for s, d in zip(sft, dpo, strict=True)), 5),
    }


def accuracy_by_kind(
    pairs: list[dict], sft: list[tuple[float, float]], dpo: list[tuple[float, float]]
) -> dict[str, KindAccuracy]:
    """Reward accuracy apart for built-in pairs whose rejected answer is the SFT model's own wrong answer
    ("own_wrong") and those where the SFT model answered right, so a plausible wrong answer stands in
    ("stand_in"): the second kind's chosen answer is the SFT model's own, which DPO on the first kind learns to
    make less likely. Empty for pairs without the built-in `on_policy` field (users' data). Pure."""
    kinds: dict[str, list[float]] = {}
    for pair, s, d in zip(pairs, sft, dpo, strict=True):
        if isinstance(pair.get("on_policy"), bool):
            kind = "own_wrong" if pair["on_policy"] else "stand_in"
            kinds.setdefault(kind, []).append(float(d[0] - s[0] > d[1] - s[1]))
    return {k: KindAccuracy(pairs=len(v), reward_accuracy=round(mean(v), 4)) for k, v in sorted(kinds.items())}


def load_adapter_model(
    model_path: str, adapter: str, dtype: str, trust_remote_code: bool, merged: bool
) -> tuple[Any, Any]:
    """(model, tokenizer): the base with `adapter`, in `dtype`; `merged` as the SFT evaluation runs its tuned
    model (fp32: merged in, no adapter matmuls per token; 16-bit: fused beside the weights)."""
    from smoltune.evaluate.generation import load_tuned

    models, tokenizer = load_tuned(model_path, adapter, "lora", trust_remote_code, dtype)
    if merged:
        with models.base():  # leaving it merges (or fuses) the adapter: smoltune.evaluate.generation.BaseAndTuned
            pass
    return models.model, tokenizer


def pair_examples(tokenizer: Any, pairs: list[dict], max_length: int) -> tuple[list[dict], list[dict]]:
    chosen = [tokenize_example(tokenizer, p["prompt"], p["chosen"], max_length, True) for p in pairs]
    rejected = [tokenize_example(tokenizer, p["prompt"], p["rejected"], max_length, True) for p in pairs]
    return chosen, rejected


@dataclass(frozen=True)
class PreferenceEval:
    """What the preference evaluation reads: the base, the two adapters, the held-out pairs and rows."""

    model_path: str
    adapters: dict[str, str]  # "sft" and "dpo" adapter folders
    dtype: str  # the SFT training's precision, as a torch dtype name
    trust_remote_code: bool
    pairs_file: str  # held-out pairs (prompt formatted, chosen, rejected)
    eval_rows_file: str  # the SFT held-out rows (prompt, completion)
    template: str
    max_length: int  # the SFT rows' (train.max_seq_length)
    pair_max_length: int  # the pairs' (preference.max_length)


def evaluate_preference(
    job: PreferenceEval, sft_figures: EvalFigures, ev: EvalConfig, beta: float
) -> tuple[PreferenceFigures, EvalFigures, list[dict], list[str]]:
    """(figures, the SFT figures with DPO as the tuned model, held-out pairs with their log-probs, DPO's answers
    to the eval prompts)."""
    started, pairs, max_length = time.perf_counter(), read_jsonl(job.pairs_file), job.max_length
    logps: dict[str, list[tuple[float, float]]] = {}
    for name in ("sft", "dpo"):
        model, tok = load_adapter_model(
            job.model_path, job.adapters[name], job.dtype, job.trust_remote_code, merged=name == "dpo"
        )
        chosen, rejected = pair_examples(tok, pairs, job.pair_max_length)
        c, r = (answer_logps(model, x, tok.pad_token_id, ev.batch_size) for x in (chosen, rejected))
        logps[name] = list(zip(c, r, strict=True))
    # The DPO model (last loaded) answers the SFT held-out rows and the prompts, measured as the SFT evaluation did.
    dpo = measure(model, tok, held_out(tok, job.eval_rows_file, ev, job.template, max_length), ev, lambda: None)
    loss, score, generations = dpo["loss"], dpo["score"], dpo["prompts"]
    figures = PreferenceFigures(
        eval_pairs=len(pairs),
        beta=beta,
        **reward_figures(logps["sft"], logps["dpo"], beta),
        reward_accuracy_by_kind=accuracy_by_kind(pairs, logps["sft"], logps["dpo"]),
        eval_loss={"base": sft_figures.eval_loss_base, "sft": sft_figures.eval_loss_tuned, "dpo": round(loss, 5)},
        accuracy={"base": sft_figures.accuracy_base, "sft": sft_figures.accuracy_tuned, "dpo": score["accuracy"]},
        checked_rows=score["checked_rows"],
        eval_seconds=round(time.perf_counter() - started, 2),
    )
    as_tuned = sft_figures.model_copy(
        update={
            "eval_loss_tuned": round(loss, 5),
            "perplexity_tuned": round(math.exp(min(loss, 50)), 3),
            **{f"{name}_tuned": score[name] for name in MATCH_SCORES},
            "accuracy_by_family": {
                family: {**sft_figures.accuracy_by_family.get(family, {}), "tuned": value}
                for family, value in score["by_family"].items()
            },
        }
    )
    scored = [
        {**p, "logp_sft": list(s), "logp_dpo": list(d)}
        for p, s, d in zip(pairs, logps["sft"], logps["dpo"], strict=True)
    ]
    return figures, as_tuned, scored, generations
