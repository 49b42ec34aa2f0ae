"""render_report is pure: fixed summary in, fixed Markdown out."""

from __future__ import annotations

from smoltune.report import render_report


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
            "rank": 16,
            "device": "cpu",
            "trainable_params": 4_884_480,
            "total_params": 139_399_488,
            "steps": 20,
            "train_seconds": 123.45,
            "tokens_per_second": 81.26,
            "peak_memory_mb": 2712.4,
            "losses": [2.5 - 0.05 * i for i in range(20)],
        },
        "eval": {
            "eval_loss_base": 2.9,
            "eval_loss_tuned": 1.2,
            "perplexity_base": 18.17,
            "perplexity_tuned": 3.32,
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
