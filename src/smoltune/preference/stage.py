"""The preference data stages' library: fetch pairs (built on-policy, or read from a source), then split and
format them with the SFT job's template.

    python -c "from smoltune.preference.stage import split_pairs; help(split_pairs)"
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from smoltune.config import PreferenceConfig
from smoltune.data.prompts import format_prompt
from smoltune.files import read_jsonl, sha256_file, write_jsonl
from smoltune.preference.builtin import checkable_questions, pairs_from_answers
from smoltune.preference.shapes import read_pairs
from smoltune.records import PreferencePairs, PreferencePrepared, ResolvedModel, TrainResult
from smoltune.redaction import redact
from smoltune.sources import source_kind

Row = dict[str, Any]
GENERATION_BATCH = 32
STRATA = ("family", "on_policy")  # fields of the built-in pairs the held-out split is stratified by


def builtin_pairs(model: ResolvedModel, sft: TrainResult, pref: PreferenceConfig, template: str) -> list[Row]:
    """Built-in checkable questions answered greedily by the SFT model (in its training precision), made into
    pairs: chosen the reference answer, rejected the model's own answer where wrong (smoltune.preference.builtin)."""
    from smoltune.evaluate.generation import generate_answers, load_tuned
    from smoltune.train.precision import DTYPES

    questions = checkable_questions(pref.num_pairs + pref.eval_pairs, pref.seed)
    models, tokenizer = load_tuned(model.path, sft.output_dir, "lora", model.trust_remote_code, DTYPES[sft.precision])
    prompts = [format_prompt(q, template, tokenizer) for q in questions]
    answers = generate_answers(models.model, tokenizer, prompts, pref.generation_max_new_tokens, GENERATION_BATCH)
    return [{**pair, "row": i} for i, pair in enumerate(pairs_from_answers(questions, answers))]


def fetch_pairs(
    pref: PreferenceConfig, out_dir: Path, model: ResolvedModel, sft: TrainResult, template: str, prefetched: Any = None
) -> PreferencePairs:
    """The pairs of `preference.source` as `out_dir/pairs.jsonl`, normalised (smoltune.preference.shapes)."""
    if source_kind(pref.source) == "embedded":
        rows, shape = builtin_pairs(model, sft, pref, template), "alpaca"
        identity = f"built-in questions answered by the SFT model (training {Path(sft.output_dir).parent.name})"
    else:
        rows, shape, identity = read_pairs(pref, prefetched)
    path = write_jsonl(out_dir / "pairs.jsonl", rows)
    return PreferencePairs(
        source=redact(pref.source),
        shape=shape,
        pairs_file=str(path),
        sha256=sha256_file(path),
        pairs=len(rows),
        identity=identity,
        on_policy=sum(1 for r in rows if r.get("on_policy") is True),
    )


def split_pairs(rows: list[Row], train_count: int, eval_count: int, seed: int) -> tuple[list[Row], list[Row]]:
    """(training pairs, held-out pairs), deterministic for `seed`; a prompt is never on both sides. Pure.

    The held-out pairs are drawn from each stratum (the pairs' `STRATA` fields, where they carry them) in
    proportion to its size, so they mirror the training mix. A plain random draw of 32 of the 96 built-in pairs
    once held out all four parity pairs whose chosen answer was "odd" and trained on none of them: reward accuracy
    then measured a bias the split had made. Rows without those fields form one stratum: a plain random split."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    strata: dict[tuple[str, ...], list[int]] = {}
    for index, row in enumerate(order):
        strata.setdefault(tuple(str(row.get(field)) for field in STRATA), []).append(index)
    quotas = proportional_quotas([len(members) for members in strata.values()], min(eval_count, len(order) // 2))
    chosen = sorted(i for members, quota in zip(strata.values(), quotas, strict=True) for i in members[:quota])
    held_out = [order[i] for i in chosen]
    held_keys = {_prompt_key(r) for r in held_out}
    taken = set(chosen)
    train = [r for i, r in enumerate(order) if i not in taken and _prompt_key(r) not in held_keys]
    return train[:train_count], held_out


def proportional_quotas(sizes: list[int], total: int) -> list[int]:
    """`total` shared over groups of `sizes` in proportion, by largest remainder (ties: the earlier group), summing
    to exactly `total` (at most sum(sizes)). Pure; by hand: a dozen lines, no library's split takes strata this
    small (scikit-learn's stratified split refuses a stratum of one)."""
    population = sum(sizes)
    if not population:
        return [0] * len(sizes)
    total = min(total, population)
    shares = [divmod(size * total, population) for size in sizes]  # whole numbers: ties are exact ties
    quotas = [whole for whole, _ in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda g: (-shares[g][1], g))
    for group in by_remainder[: total - sum(quotas)]:
        quotas[group] += 1
    return quotas


def _prompt_key(row: Row) -> tuple[str, str]:
    return str(row.get("instruction", "")).strip(), str(row.get("input", "") or "").strip()


def prepare_pairs(
    pairs_file: str,
    pref: PreferenceConfig,
    template: str,
    out_dir: Path,
    tokenizer: Any = None,
    validated_key: str = "",
) -> PreferencePrepared:
    """`train.jsonl` (prompt formatted with the SFT template, chosen, rejected: what DPOTrainer reads) and
    `eval.jsonl` (the same plus the pair's other fields, for the report)."""
    train, held_out = split_pairs(read_jsonl(pairs_file), pref.num_pairs, pref.eval_pairs, pref.seed)

    def formatted(row: Row) -> Row:
        return {"prompt": format_prompt(row, template, tokenizer), "chosen": row["chosen"], "rejected": row["rejected"]}

    train_path = write_jsonl(out_dir / "train.jsonl", [formatted(r) for r in train])
    eval_path = write_jsonl(out_dir / "eval.jsonl", [{**r, **formatted(r)} for r in held_out])
    short = [f"{got} {what} of {asked}" for got, asked, what in ((len(train), pref.num_pairs, "training pairs"),
             (len(held_out), pref.eval_pairs, "held-out pairs")) if got < asked]  # fmt: skip
    return PreferencePrepared(
        validated_key=validated_key,
        train_file=str(train_path),
        eval_file=str(eval_path),
        train_sha256=sha256_file(train_path),
        eval_sha256=sha256_file(eval_path),
        train_pairs=len(train),
        eval_pairs=len(held_out),
        note=f"the pairs gave {' and '.join(short)} asked for" if short else None,
    )
