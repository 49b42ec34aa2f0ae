"""render_report is pure: fixed summary in, fixed Markdown out."""

from __future__ import annotations

import pytest

from smoltune.report.markdown import render_report


def make_summary() -> dict:
    return {
        "run_name": "r1",
        "model": {"source": "embedded", "sha256": "ab" * 32, "description": "SmolLM2, dequantised Q4_1"},
        "data": {"source": "embedded", "train_rows": 100, "eval_rows": 40},
        "validation": {
            "success": True,
            "row_count": 2400,
            "checks": [{"name": "column 'input' present", "severity": "critical", "success": True}],
        },
        "train": {
            "backend": "hf",
            "mode": "lora",
            "lora_rank": 16,
            "device": "cpu",
            "trainable_params": 4_884_480,
            "total_params": 139_399_488,
            "steps": 20,
            "train_seconds": 123.45,
            "tokens_per_second": 81.26,
            "peak_memory_mb": 2712.4,
            "losses": [2.5 - 0.05 * i for i in range(20)],
            "precision": "bf16",
            "settings": {"precision": "auto on CPU: bf16 matmuls 4.4x fp32 here", "matmul_gflops": {"fp32": 188.2}},
        },
        "eval": {
            "eval_loss_base": 2.9,
            "eval_loss_tuned": 1.2,
            "perplexity_base": 18.17,
            "perplexity_tuned": 3.32,
            "eval_rows": 40,
            "eval_seconds": 20.0,
            "eval_precision": "bf16",
        },
        "artifacts": {"adapter_dir": "/x/adapter", "adapter_mb": 18.69, "saved_mb": 18.69},
        "stage_seconds": {"train": 125.0},
    }


def test_report_shows_the_measured_figures() -> None:
    text = render_report(make_summary(), [])
    assert "4,884,480 of 139,399,488 (3.50%)" in text
    assert "| training time | 123.5 s |" in text
    assert "| real tokens / s | 81.3 |" in text
    assert "| peak memory | 2712 MiB |" in text
    assert "| saved size | 18.69 MiB |" in text
    assert "- adapter_dir: `/x/adapter`" in text
    assert "| eval loss | 2.9000 | 1.2000 |" in text
    assert "lowered the held-out loss (-1.7000 over 40 rows" in text
    assert "| final train loss | 1.5500 |" in text
    assert "ab" * 32 in text and "dequantised Q4_1" in text
    assert "| train | 125.0 |" in text
    assert "| precision | bf16 (auto on CPU: bf16 matmuls 4.4x fp32 here; measured GFLOP/s fp32 188) |" in text
    assert "Evaluated in 20.0 s (0.50 s per held-out row, base and tuned, in bf16)." in text
    assert "![Loss curve](loss_curve.png)" in text


def test_packed_attention_names_its_kernel_and_reason() -> None:
    assert "| packed attention |" not in render_report(make_summary(), [])  # not packed
    summary = make_summary()
    summary["train"]["settings"] |= {"fast_path": {"padding_free": True, "segment_kernel": "flash"}}
    summary["train"]["settings"]["segment_kernel"] = "auto on CUDA: FlashAttention-2 varlen (flash-attn installed)"
    expected = "| packed attention | flash (auto on CUDA: FlashAttention-2 varlen (flash-attn installed)) |"
    assert expected in render_report(summary, [])


def test_a_data_parallel_training_says_so() -> None:
    assert "| processes |" not in render_report(make_summary(), [])
    summary = make_summary()
    summary["train"]["processes"] = 2
    assert "| processes | 2 data-parallel (torchrun); peak memory is rank 0's |" in render_report(summary, [])


def test_loss_table_samples_first_and_last_step() -> None:
    text = render_report(make_summary(), [])
    loss_rows = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 3]
    steps = [line.split("|")[1].strip() for line in loss_rows if line.split("|")[1].strip().isdigit()]
    assert steps[0] == "1" and steps[-1] == "20" and len(steps) == 12


def test_generations_table_escapes_cells() -> None:
    generations = [{"instruction": "Pipe | test", "input": "x", "base": "a\nb", "tuned": ""}]
    text = render_report(make_summary(), generations)
    assert "| Pipe \\| test — x | a b | — |" in text


def test_report_says_when_the_adapter_did_not_help() -> None:
    summary = make_summary()
    summary["eval"]["eval_loss_tuned"] = 3.0
    assert "did not lower the held-out loss (+0.1000" in render_report(summary, [])


def test_render_is_deterministic() -> None:
    assert render_report(make_summary(), []) == render_report(make_summary(), [])


def compare_rows() -> list[dict]:
    common = {"total_params": 139_000_000, "losses": [2.0, 1.5]}
    return [
        {
            **common,
            "variant": "lora-r16",
            "mode": "lora",
            "lora_rank": 16,
            "trainable_params": 4_884_480,
            "train_seconds": 100.0,
            "tokens_per_second": 110.0,
            "peak_memory_mb": 2500.0,
            "saved_mb": 18.7,
            "final_train_loss": 1.5,
            "eval_loss": 1.75,
            "accuracy": 0.12,
        },
        {
            **common,
            "variant": "full",
            "mode": "full",
            "lora_rank": None,
            "trainable_params": 134_515_008,
            "train_seconds": 120.0,
            "tokens_per_second": 90.0,
            "peak_memory_mb": 4800.0,
            "saved_mb": 513.0,
            "final_train_loss": 1.2,
            "eval_loss": 1.60,
            "accuracy": 0.20,
        },
    ]


def test_claims_verdicts_on_fixed_figures() -> None:
    from smoltune.report.compare import check_claims, pick_pair

    lora, full = pick_pair(compare_rows())
    verdicts = {c["claim"]: c for c in check_claims(lora, full)}
    assert verdicts["95% fewer parameters"]["holds"] and verdicts["95% fewer parameters"]["measured"] == pytest.approx(
        1 - 4_884_480 / 134_515_008
    )
    assert verdicts["20–30% faster"]["holds"] and verdicts["20–30% faster"]["measured"] == pytest.approx(0.2)
    assert verdicts["90% smaller"]["holds"]
    assert verdicts["40% less memory"]["holds"] and verdicts["40% less memory"]["measured"] == pytest.approx(
        1 - 2500 / 4800
    )
    quality = verdicts["95–100% of full quality"]
    assert not quality["holds"] and quality["measured"] == pytest.approx(0.6) and "accuracy" in quality["what"]


def test_quality_falls_back_to_eval_loss_without_accuracy() -> None:
    from smoltune.report.compare import check_claims

    lora, full = compare_rows()
    lora["accuracy"] = full["accuracy"] = None
    [quality] = [c for c in check_claims(lora, full) if c["claim"].startswith("95–100%")]
    assert quality["measured"] == pytest.approx(1.60 / 1.75) and not quality["holds"]


def test_render_comparison_table_and_claims() -> None:
    from smoltune.report.compare import check_claims, render_comparison

    rows = compare_rows()
    text = render_comparison(rows, check_claims(rows[0], rows[1]), ("lora-r16", "full"), "cmp")
    assert "| lora-r16 | 4,884,480 (3.51%) | 100.0 s | 110.0 | 2500 MiB | 18.7 MiB | 1.5000 | 1.7500 | 12.0% |" in text
    assert "| full | 134,515,008 (96.77%) | 120.0 s |" in text
    assert "| 20–30% faster | 20.0% faster training | holds |" in text
    assert "| 95–100% of full quality | 60.0% (held-out accuracy ratio) | does not hold |" in text
    assert "4 of 5 claims hold" in text
    assert "Needs a LoRA variant" in render_comparison(rows[:1], [], None, "cmp")


def test_promotion_section() -> None:
    summary = make_summary()
    summary["promotion"] = {
        "promoted": False,
        "key": "embedded | embedded",
        "metric": "accuracy_tuned",
        "value": 0.1,
        "current_value": 0.12,
        "current_run": "r0",
        "reason": "accuracy_tuned 0.1000 vs current 0.1200",
    }
    text = render_report(summary, [])
    assert "**Not promoted** for `embedded | embedded` by accuracy_tuned" in text
    assert "| registered (r0) | 0.1200 |" in text and "| this run | 0.1000 |" in text


def test_html_is_self_contained() -> None:
    from smoltune.report.html import render_html
    from smoltune.report.markdown import LOSS_CURVE

    page = render_html(render_report(make_summary(), []), {LOSS_CURVE: b"\x89PNG-bytes"}, "r1")
    assert page.startswith("<!doctype html>") and "<table>" in page
    assert 'src="data:image/png;base64,iVBORy1ieXRlcw=="' in page and f'src="{LOSS_CURVE}"' not in page


def test_the_report_names_the_command_that_serves_its_adapter() -> None:
    summary = {**make_summary(), "run_dir": "/runs/r1"}
    assert "`smoltune serve --adapter r1=/runs/r1`" in render_report(summary, [])
    full = {**summary, "artifacts": {"model_dir": "/x/model", "saved_mb": 500.0}}
    assert "smoltune serve" not in render_report(full, [])


def test_links_and_images_from_prompts_and_answers_are_text_never_fetched_or_run() -> None:
    """A model's answer or a user's prompt holding Markdown links and images: in report.md (which the Prefect UI
    renders) the brackets are escaped; in report.html no <a> or foreign <img> survives, only the report's own
    embedded plot."""
    import re

    from smoltune.report.html import render_html
    from smoltune.report.markdown import LOSS_CURVE

    generations = [
        {"instruction": "[click](javascript:alert(1))", "input": "", "base": "![x](http://evil.example/a.png)",
         "tuned": "<http://evil.example/b> <img src=x onerror=alert(1)>"},
    ]  # fmt: skip
    text = render_report(make_summary(), generations)
    assert "\\[click\\](javascript:alert(1))" in text and "!\\[x\\](http://evil.example/a.png)" in text
    page = render_html(text + "\n\n[raw](javascript:x) ![r](https://evil.example/r.png)", {LOSS_CURVE: b"png"}, "r")
    tags = re.findall(r"<(?:a|img)\b[^>]*>", page)
    assert tags == ['<img alt="Loss curve" src="data:image/png;base64,cG5n" />']
    assert "href=" not in page and "<span>[image: r]</span>" in page
