"""The model card written into every trained folder: the Hub's YAML metadata, checked with what of the Hub's
validation runs offline (the card parses back with huggingface_hub's ModelCard, `model-index` parses into
EvalResults and round-trips, base model and datasets are hub ids), and the text the card carries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from smoltune.share.facts import card_targets
from smoltune.share.model_card import ExtraResult, build_card, card_problems, write_model_cards
from smoltune.share.push import read_summary
from tests.share.runs import BASE_ID, DATASET_ID, TRAIN_KEY, hub_base, make_adapter, make_dpo_run, make_run


@pytest.fixture(scope="module")
def adapter_src(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


def metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def results_by_metric(meta: dict) -> dict[str, float]:
    _, results = model_index_to_eval_results(meta["model-index"])
    return {r.metric_name: r.metric_value for r in results}


def test_adapter_card_replaces_peft_template_with_hub_metadata(tmp_path: Path, adapter_src: Path) -> None:
    assert "[More Information Needed]" in (adapter_src / "README.md").read_text()  # PEFT's template
    run = make_run(tmp_path, adapter_src, hub_base(tmp_path))
    card_file = tmp_path / "_cache" / "train" / TRAIN_KEY / "adapter" / "README.md"
    assert write_model_cards(read_summary(run)) == [card_file]
    text = card_file.read_text()
    assert "[More Information Needed]" not in text
    assert card_problems(text) == []
    meta = metadata(text)
    assert meta["base_model"] == BASE_ID
    assert meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert meta["datasets"] == [DATASET_ID]
    assert {"smoltune", "lora", "sft"} <= set(meta["tags"]) and "dpo" not in meta["tags"]
    assert results_by_metric(meta) == {"held-out accuracy (checkable rows)": 0.55, "held-out eval loss": 1.2}
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == f"SmolLM2-135M-Instruct-smoltune-sft-{TRAIN_KEY[:8]}"
    assert {r.dataset_type for r in results} == {DATASET_ID}
    assert eval_results_to_model_index(name, results) == meta["model-index"]  # parses back to the same entries
    assert ModelCard(text).data.eval_results == results


def test_adapter_card_text_carries_settings_gate_claims_and_loading(tmp_path: Path, adapter_src: Path) -> None:
    run = make_run(tmp_path, adapter_src, hub_base(tmp_path))
    text = write_model_cards(read_summary(run))[0].read_text()
    assert "| LoRA r / alpha | 16 / 16 (scale alpha / r) |" in text
    assert "| batch | 2 rows x 4 accumulation |" in text
    assert "| learning rate | 0.0002 (linear, 5 warm-up steps) |" in text
    assert "| precision | bf16 |" in text and "| seed | 3407 |" in text
    assert "gate passed on 500 rows (2 checks, 1 warning(s): duplicate questions: 3 rows)" in text
    assert "| eval loss | 2.9000 | 1.2000 |" in text
    assert "| accuracy (checkable rows) | 12.5% | 55.0% |" in text
    assert "lowered the held-out loss (-1.7000)" in text
    assert 'PeftModel.from_pretrained(base, "OWNER/NAME")' in text and f'from_pretrained("{BASE_ID}")' in text
    assert str(tmp_path) not in text  # no local path of this machine


def test_card_is_deterministic_from_the_records(tmp_path: Path, adapter_src: Path) -> None:
    """Another run sharing the cached adapter (other name, folder, timings, promotion) writes the same bytes."""
    summary = read_summary(make_run(tmp_path, adapter_src, hub_base(tmp_path)))
    card_file = write_model_cards(summary)[0]
    first = card_file.read_text()
    other = summary | {"run_name": "r2", "run_dir": "/elsewhere/r2", "stage_seconds": {"train": 1.0}, "promotion": None}
    write_model_cards(other)
    assert card_file.read_text() == first


def test_merged_and_full_folders_get_transformers_cards(tmp_path: Path, adapter_src: Path) -> None:
    run = make_run(tmp_path / "lora", adapter_src, hub_base(tmp_path), merged=True)
    adapter_card, merged_card = write_model_cards(read_summary(run))
    assert merged_card.parent.name == "merged"
    merged = metadata(merged_card.read_text())
    assert merged["library_name"] == "transformers" and merged["base_model"] == BASE_ID
    assert "merged" in merged["tags"] and card_problems(merged_card.read_text()) == []
    assert results_by_metric(merged) == results_by_metric(metadata(adapter_card.read_text()))
    assert 'AutoModelForCausalLM.from_pretrained("OWNER/NAME")' in merged_card.read_text()

    full_run = make_run(tmp_path / "full", None, hub_base(tmp_path))
    (full_card,) = write_model_cards(read_summary(full_run))
    full = metadata(full_card.read_text())
    assert full_card.parent.name == "model" and full["library_name"] == "transformers"
    assert "full-finetune" in full["tags"] and "lora" not in full["tags"]


def test_extra_results_join_the_model_index(tmp_path: Path, adapter_src: Path) -> None:
    """The lead adds lm-eval harness metrics through `extra`: they land in model-index and in the text."""
    facts = card_targets(read_summary(make_run(tmp_path, adapter_src, hub_base(tmp_path))))[0]
    text = str(build_card(facts, [ExtraResult("smoltune_heldout", "exact_match", 0.4375)]))
    assert card_problems(text) == []
    _, results = model_index_to_eval_results(metadata(text)["model-index"])
    harness = [r for r in results if r.dataset_type == "smoltune_heldout"]
    assert harness == [
        EvalResult(
            task_type="text-generation", task_name="Text generation", dataset_type="smoltune_heldout",
            dataset_name="smoltune_heldout", metric_type="exact_match", metric_name="smoltune_heldout exact_match",
            metric_value=0.4375,
        )
    ]  # fmt: skip
    assert "| smoltune_heldout | exact_match | 0.4375 |" in text


def test_url_and_local_data_are_never_named_in_metadata(tmp_path: Path, adapter_src: Path) -> None:
    url = "https://user:secretpw@data.example.com/rows.jsonl?token=abc123&n=1"
    text = write_model_cards(read_summary(make_run(tmp_path / "u", adapter_src, hub_base(tmp_path), url)))[0]
    text = text.read_text()
    assert "datasets" not in metadata(text) and card_problems(text) == []
    assert "secretpw" not in text and "abc123" not in text and "data.example.com/rows.jsonl" in text
    local = str(tmp_path / "private" / "dir" / "rows.jsonl")
    text = write_model_cards(read_summary(make_run(tmp_path / "l", adapter_src, hub_base(tmp_path), local)))[0]
    text = text.read_text()
    assert "datasets" not in metadata(text) and "private/dir" not in text and "`rows.jsonl`" in text


def stand_in_gguf(folder: Path) -> Path:
    """A stand-in for the embedded GGUF holding only its header: license apache-2.0, language en."""
    import gguf

    stand_in = folder / "stand-in.gguf"
    writer = gguf.GGUFWriter(str(stand_in), "llama")
    writer.add_license("apache-2.0")
    writer.add_languages(["en"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return stand_in


def test_embedded_base_names_hub_release_and_says_dequantised(
    tmp_path: Path, adapter_src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The license comes from the GGUF's own metadata (a stand-in GGUF holding only its header here)."""
    stand_in = stand_in_gguf(tmp_path)
    monkeypatch.setattr("smoltune.model.find_embedded_gguf", lambda: stand_in)
    base = hub_base(tmp_path, license_id=None).model_copy(update={"kind": "embedded", "source": "embedded"})
    text = write_model_cards(read_summary(make_run(tmp_path, adapter_src, base, "embedded")))[0].read_text()
    meta = metadata(text)
    assert meta["base_model"] == BASE_ID and meta["license"] == "apache-2.0"
    assert "datasets" not in meta and {r.dataset_type for r in model_index_to_eval_results(meta["model-index"])[1]} == {
        "smoltune-heldout"
    }
    assert "Q4_1 GGUF weights" in text and "dequantised to fp32" in text


def test_the_embedded_license_is_read_from_the_gguf_once_then_kept_beside_the_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smoltune.errors import SourceError
    from smoltune.model import _COMPLETE_MARKER, embedded_license

    stand_in = stand_in_gguf(tmp_path)
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / _COMPLETE_MARKER).write_text(json.dumps({"sha256": "abc", "conversion_version": 2}))
    monkeypatch.setattr("smoltune.model.find_embedded_gguf", lambda: stand_in)
    assert embedded_license(converted) == ("apache-2.0", ["en"])
    kept = json.loads((converted / _COMPLETE_MARKER).read_text())
    assert kept == {"sha256": "abc", "conversion_version": 2, "license": "apache-2.0", "languages": ["en"]}

    def gone() -> Path:
        raise SourceError("the GGUF is not read again")

    monkeypatch.setattr("smoltune.model.find_embedded_gguf", gone)
    assert embedded_license(converted) == ("apache-2.0", ["en"])
    assert embedded_license(tmp_path / "elsewhere") == (None, None)  # no marker, no GGUF: no license named


def test_dpo_run_cards_the_dpo_and_the_sft_adapter(tmp_path: Path, adapter_src: Path) -> None:
    sft_card, dpo_card = write_model_cards(read_summary(make_dpo_run(tmp_path, adapter_src, hub_base(tmp_path))))
    assert sft_card.parent.parent.parent.name == "train" and dpo_card.parent.parent.parent.name == "train_preference"
    dpo = metadata(dpo_card.read_text())
    assert "dpo" in dpo["tags"] and card_problems(dpo_card.read_text()) == []
    assert results_by_metric(dpo) == {
        "held-out accuracy (checkable rows)": 0.6, "held-out eval loss": 1.25, "reward accuracy": 0.8125
    }  # fmt: skip
    assert "dpo" not in metadata(sft_card.read_text())["tags"]
    assert "reward accuracy 81.2% on 16 held-out pairs" in dpo_card.read_text()


def test_card_problems_catch_what_the_hub_would_reject() -> None:
    bad = "---\nbase_model: /home/me/models/base\nlibrary_name: peft\npipeline_tag: text-generation\ntags: [x]\n---\n"
    assert card_problems(bad) == [
        "base_model: ['/home/me/models/base'] are not hub ids (a path or URL must not be named here)"
    ]
    broken = "---\nlibrary_name: peft\nmodel-index:\n- name: m\n  results:\n  - task: {}\n---\n"
    assert card_problems(broken)[0].startswith("metadata: Invalid `model_index`")


def test_harness_scores_recorded_by_the_evaluation_join_the_card(tmp_path: Path, adapter_src: Path) -> None:
    summary = read_summary(make_run(tmp_path, adapter_src, hub_base(tmp_path)))
    score = {"task": "smoltune_heldout", "metric": "exact_match,strict-match", "base": 0.1, "tuned": 0.45}
    summary["eval"]["harness"] = {"scores": [score, {**score, "metric": "unscored", "tuned": None}]}
    meta = metadata(write_model_cards(summary)[0].read_text())
    assert results_by_metric(meta)["smoltune_heldout exact_match,strict-match"] == 0.45
    assert "smoltune_heldout unscored" not in results_by_metric(meta)
