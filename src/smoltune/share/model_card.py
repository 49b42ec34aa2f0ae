"""The model card: `README.md` with the Hub's YAML metadata, written into every adapter and merged-model folder.

    python -c "import json; from smoltune.share.model_card import write_model_cards; \
print(write_model_cards(json.load(open('runs/<run>/summary.json'))))"

Rendered with huggingface_hub's `ModelCard` / `ModelCardData` (the `model-index` results from its `EvalResult`).
PEFT's `save_pretrained` leaves its own template README.md in the adapter folder: the card replaces it. The card
is a pure function of the stage records (`smoltune.share.facts`), so rewriting it in a shared cache folder is
harmless; the training record names only the folder, never its files, so the cache still trusts it.

`card_problems` is the part of the Hub's metadata validation that runs offline (`ModelCard.validate` posts the
card to huggingface.co): the YAML block parses, `model-index` parses back into eval results, and base model and
datasets are hub ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smoltune.files import atomic_write_text
from smoltune.hub import is_hub_id
from smoltune.model import embedded_license
from smoltune.share.card_text import card_body, model_name
from smoltune.share.facts import CardFacts, ExtraResult, card_targets, harness_results

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

CARD_FILE = "README.md"
HELDOUT_DATASET = "smoltune-heldout"  # the dataset id of held-out rows that are not a hub dataset of their own


def base_license(model: dict[str, Any]) -> tuple[str | None, list[str] | None]:
    """(license, languages) of the base model where its files say so: the embedded GGUF's metadata, or the YAML
    of a README.md in the model folder; (None, None) when unknown (the card then names no license)."""
    if model.get("kind") == "embedded":
        return embedded_license(Path(model.get("path") or ""))
    readme = Path(model.get("path") or "") / CARD_FILE
    if not readme.is_file():
        return None, None
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme, ignore_metadata_errors=True).data
    except (ValueError, OSError):
        return None, None  # a README without usable metadata says nothing about the license
    language = data.get("language")
    return data.get("license"), [language] if isinstance(language, str) else language


def eval_results(facts: CardFacts, extra: Sequence[ExtraResult] = ()) -> list[EvalResult]:
    """The tuned model's measured figures as model-index entries: held-out accuracy and eval loss (and, for DPO,
    reward accuracy on held-out pairs), then `extra`."""
    from huggingface_hub import EvalResult

    def result(dataset: str, label: str, metric: str, name: str, value: float | None) -> list[EvalResult]:
        if value is None:
            return []
        return [
            EvalResult(
                task_type="text-generation",
                task_name="Text generation",
                dataset_type=dataset,
                dataset_name=label,
                metric_type=metric,
                metric_name=name,
                metric_value=round(float(value), 4),
            )
        ]

    heldout = facts.data.hub_id or HELDOUT_DATASET
    label = f"held-out rows of {facts.data.name} ({facts.data_rows['eval_rows']})"
    if facts.preference is None:
        accuracy, loss = facts.figures.get("accuracy_tuned"), facts.figures["eval_loss_tuned"]
        pairs: list[EvalResult] = []
    else:
        dpo = facts.preference["figures"]
        accuracy, loss = dpo["accuracy"].get("dpo"), dpo["eval_loss"]["dpo"]
        source = facts.preference["pairs"]
        pairs = result(
            source.hub_id or "smoltune-preference-pairs",
            f"held-out preference pairs ({facts.preference['eval_pairs']})",
            "accuracy",
            "reward accuracy",
            dpo["reward_accuracy"],
        )
    rows = result(heldout, label, "accuracy", "held-out accuracy (checkable rows)", accuracy)
    rows += result(heldout, label, "loss", "held-out eval loss", loss)
    rows += pairs
    for item in extra:
        rows += result(item.task, item.task, item.metric, f"{item.task} {item.metric}", item.value)
    return rows


def card_data(facts: CardFacts, extra: Sequence[ExtraResult] = ()) -> ModelCardData:
    """The YAML metadata the Hub reads: base model, library, pipeline, tags, datasets, license, model-index."""
    from huggingface_hub import ModelCardData

    license_id, languages = base_license(facts.model)
    sources = [facts.data] + ([facts.preference["pairs"]] if facts.preference else [])
    datasets = sorted({s.hub_id for s in sources if s.hub_id})
    mode = facts.result.get("mode")
    tags = ["smoltune", "lora" if mode == "lora" else "full-finetune", "sft", "trl"]
    tags += ["dpo"] if facts.stage == "dpo" else []
    tags += ["unsloth"] if facts.result.get("backend") == "unsloth" else []
    tags += ["merged"] if facts.kind == "merged" else []
    results = eval_results(facts, extra)
    return ModelCardData(
        base_model=facts.model.get("hub_id"),
        library_name="peft" if facts.kind == "adapter" else "transformers",
        pipeline_tag="text-generation",
        license=license_id,
        language=languages,
        datasets=datasets or None,
        tags=tags,
        model_name=model_name(facts),
        eval_results=results or None,
    )


def build_card(facts: CardFacts, extra: Sequence[ExtraResult] = ()) -> ModelCard:
    from huggingface_hub import ModelCard

    data = card_data(facts, extra)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(facts, extra)}")


def write_model_cards(summary: dict[str, Any], extra: Sequence[ExtraResult] = ()) -> list[Path]:
    """Write README.md into each trained folder of the run (replacing PEFT's template), with the harness scores
    the evaluation recorded and `extra` in model-index; returns the files."""
    written = []
    for facts in card_targets(summary):
        folder = Path(facts.folder)
        if folder.is_dir():  # a deleted cache folder has nothing to describe; the next run rebuilds it
            # A DPO card's figures are the SFT evaluation's: its harness scores are not the DPO adapter's.
            harness = harness_results(facts.figures) if facts.preference is None else []
            results = [*harness, *extra]
            written.append(atomic_write_text(folder / CARD_FILE, str(build_card(facts, results))))
    return written


def card_problems(text: str) -> list[str]:
    """What the Hub would reject in this card's metadata, as far as it can be checked offline; empty if none."""
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(text).data  # parses the YAML block, and model-index into EvalResults
    except ValueError as err:
        return [f"metadata: {err}"]
    problems = []
    for key in ("library_name", "pipeline_tag", "tags"):
        if not data.get(key):
            problems.append(f"{key}: missing")
    for key in ("base_model", "datasets"):
        value = data.get(key) or []
        bad = [v for v in ([value] if isinstance(value, str) else value) if not is_hub_id(str(v))]
        if bad:
            problems.append(f"{key}: {bad} are not hub ids (a path or URL must not be named here)")
    for result in data.eval_results or []:
        if not isinstance(result.metric_value, int | float):
            problems.append(f"model-index: {result.metric_type} value {result.metric_value!r} is not a number")
    return problems
