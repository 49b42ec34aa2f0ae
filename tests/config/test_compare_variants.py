"""Compare variants that set `preference` (DPO on the variant's SFT result): accepted with the settings they ask
for, refused up front for what the preference flow refuses (its own messages, naming the variant), and keyed so
that their SFT stages are those of a plain variant with the same SFT settings."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from smoltune.config import (
    ConfigError,
    PreferenceConfig,
    build_config,
    load_compare_config,
    variant_config,
)

LORA = "train.mode: lora, train.lora.r: 8, train.lora.alpha: 8"
DOCS_PAGE = Path("docs/pipeline/report.md")


def compare(tmp_path: Path, text: str):  # noqa: ANN201
    path = tmp_path / "compare.yaml"
    path.write_text(text)
    return load_compare_config(path)


def jobs(compare_config) -> dict:  # noqa: ANN001
    return {v.name: variant_config(compare_config, v) for v in compare_config.variants}


def test_a_variant_that_sets_preference_runs_dpo_with_its_settings(tmp_path: Path) -> None:
    got = jobs(
        compare(
            tmp_path,
            "variants:\n"
            f"  - {{name: plain, set: {{{LORA}}}}}\n"
            f"  - {{name: defaults, set: {{{LORA}, preference: {{}}}}}}\n"
            f"  - {{name: beta, set: {{{LORA}, preference.beta: 0.2}}}}\n",
        )
    )
    assert got["plain"].preference is None
    assert got["defaults"].preference == PreferenceConfig()
    assert got["beta"].preference == PreferenceConfig(beta=0.2)
    # Apart from `preference`, a DPO variant is the plain variant's job.
    assert got["defaults"].model_copy(update={"preference": None}) == got["plain"]


def test_the_top_level_preference_section_is_what_dpo_variants_start_from(tmp_path: Path) -> None:
    text = (
        "preference: {num_pairs: 8, eval_pairs: 4}\n"
        "variants:\n"
        f"  - {{name: plain, set: {{{LORA}}}}}\n"
        f"  - {{name: dpo, set: {{{LORA}, preference.beta: 0.3}}}}\n"
    )
    got = jobs(compare(tmp_path, text))
    assert got["plain"].preference is None  # a variant without `preference` trains no DPO
    assert got["dpo"].preference == PreferenceConfig(num_pairs=8, eval_pairs=4, beta=0.3)
    with pytest.raises(ConfigError, match="no variant sets preference"):
        compare(tmp_path, f"preference: {{beta: 0.3}}\nvariants:\n  - {{name: plain, set: {{{LORA}}}}}\n")


def test_dpo_variants_the_preference_flow_refuses_are_refused_naming_each(tmp_path: Path) -> None:
    # The preference flow's own messages for the same jobs...
    with pytest.raises(ConfigError) as full:
        build_config({"train": {"mode": "full"}, "preference": {}})
    with pytest.raises(ConfigError) as four_bit:
        build_config({"model": {"load_in_4bit": True}, "preference": {}})
    # ...each reported for its variant, every variant's problems at once.
    with pytest.raises(ConfigError) as err:
        compare(
            tmp_path,
            "variants:\n"
            "  - {name: dpo-full, set: {train.mode: full, preference: {}}}\n"
            "  - {name: dpo-typo, set: {preference.beta: 0.2, preference.colour: red}}\n"
            "  - {name: dpo-bad-beta, set: {preference: {beta: 0}}}\n"
            "  - {name: full, set: {train.mode: full}}\n",
        )
    problems = err.value.problems
    assert [f"variant dpo-full: {p}" for p in full.value.problems] == [p for p in problems if "dpo-full" in p]
    assert any(p.startswith("variant dpo-typo: preference.colour") for p in problems)
    assert any(p.startswith("variant dpo-bad-beta: preference.beta") for p in problems)
    assert not any("variant full:" in p for p in problems)  # full fine-tuning without DPO is a valid variant
    assert "DPO trains the SFT adapter further; set train.mode=lora" in str(err.value)

    with pytest.raises(ConfigError) as err:
        compare(tmp_path, "model: {load_in_4bit: true}\nvariants:\n  - {name: qlora-dpo, set: {preference: {}}}\n")
    assert err.value.problems == [f"variant qlora-dpo: {p}" for p in four_bit.value.problems]


def test_the_docs_dpo_variant_example_loads(tmp_path: Path) -> None:
    section = DOCS_PAGE.read_text().split("### A DPO variant", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    got = jobs(compare(tmp_path, example.group(1)))
    assert got["lora-r16"].preference is None and got["lora-r16-dpo"].preference.beta == 0.1


def test_a_dpo_variant_has_the_sft_cache_keys_of_its_twin(tmp_path: Path) -> None:
    """Its SFT training, base and tuned evaluations are keyed as the plain variant's: the cache finds them."""
    from smoltune.pipeline.keys import evaluate_base_parts, evaluate_parts, train_parts

    got = jobs(
        compare(
            tmp_path,
            f"variants:\n  - {{name: plain, set: {{{LORA}}}}}\n"
            f"  - {{name: dpo, set: {{{LORA}, preference: {{beta: 0.5, max_steps: 3}}}}}}\n",
        )
    )
    # Stand-ins for the upstream stage records: only the fields the key functions read.
    records = {
        "cache_dir": str(tmp_path),
        "model": SimpleNamespace(sha256="m"),
        "prepared": SimpleNamespace(
            train_sha256="t", train_tokens_sha256="k", validated_key="v", eval_sha256="e", eval_file="x"
        ),
        "trained": SimpleNamespace(key="trained", result=SimpleNamespace(precision="fp32", device="cpu")),
        "base": SimpleNamespace(key="base", base_file=str(base_file(tmp_path))),
    }
    for parts in (train_parts, evaluate_base_parts, evaluate_parts):
        assert parts({**records, "config": got["dpo"]}) == parts({**records, "config": got["plain"]}), parts


def base_file(folder: Path) -> Path:
    """A stand-in for the evaluate_base stage's result file (the evaluate key reads its content)."""
    path = folder / "base.json"
    path.write_text('{"loss": 1.0}')
    return path
