"""The benchmark (bench/): its arithmetic and verdicts on fixed figures, the stretched rows of the scaling table,
and `bench/run.py` end to end with all three contenders on the tiny llama."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import ablation  # noqa: E402
import scaling  # noqa: E402
import verdicts  # noqa: E402


def contender(tokens_per_second: float, rss: float, losses: list[float]) -> dict:
    return {"tokens_per_second": tokens_per_second, "peak_rss_mb": rss, "losses": losses}


def test_mfu_counts_four_flops_per_parameter_and_token() -> None:
    assert verdicts.mfu(100.0, 134_515_008, 140.0) == pytest.approx(4 * 134_515_008 * 100 / 140e9)


def test_matmul_params_are_read_from_the_safetensors_headers(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert verdicts.matmul_params(tiny_model_dir) == sum(p.numel() for p in model.parameters())


def test_summary_compares_smoltune_with_the_faster_baseline() -> None:
    figures = {
        "trl": contender(4.0, 1900, [2.0, 1.5]),
        "unsloth": contender(80.0, 1850, [2.0, 1.6]),
        "smoltune": contender(200.0, 2800, [2.01, 1.62]),
    }
    summary = verdicts.summarise(figures, peak_gflops=140.0, params=134_515_008, baselines=("trl", "unsloth"))
    assert summary["faster_baseline"] == "unsloth"
    assert summary["speed_ratio"] == pytest.approx(2.5)
    assert summary["loss_gap"] == {"trl": pytest.approx(0.12), "unsloth": pytest.approx(0.02)}
    assert summary["mfu"]["smoltune"] == pytest.approx(4 * 134_515_008 * 200 / 140e9, abs=1e-4)
    speed, mfu, memory, quality = summary["verdicts"]
    assert "2.50x" in speed and "NOT met" in speed
    assert "76.9%" in mfu and mfu.endswith("met") and "NOT" not in mfu
    assert "NOT met" in memory
    assert "0.0200 vs unsloth; within 0.05: yes (vs trl: 0.1200)" in quality


def test_quality_fails_when_the_faster_baselines_curve_is_not_matched() -> None:
    figures = {"unsloth": contender(80.0, 1850, [2.0, 1.6]), "smoltune": contender(300.0, 1800, [2.0, 1.7])}
    summary = verdicts.summarise(figures, peak_gflops=140.0, params=10**8, baselines=("trl", "unsloth"))
    speed, _, memory, quality = summary["verdicts"]
    assert "3.75x" in speed and speed.endswith("met") and "NOT" not in speed
    assert memory.endswith("met") and "NOT" not in memory
    assert "0.1000 vs unsloth" in quality and quality.endswith("NO")


def test_summary_without_baselines_gives_mfu_only() -> None:
    summary = verdicts.summarise({"smoltune": contender(100.0, 1, [1.0])}, 100.0, 10**8, ("trl", "unsloth"))
    assert summary["verdicts"] == [] and summary["mfu"]["smoltune"] == pytest.approx(0.4)


def test_ablation_turns_each_speed_switch_off_alone_then_all() -> None:
    runs = dict(ablation.variants())
    assert runs["all switches on (default)"] == ()
    for switch in ablation.SWITCHES:
        assert runs[f"{switch} off"] == (f"speed.{switch}=false",)
    assert len(runs["all switches off"]) == len(ablation.SWITCHES) == 5


def test_stretched_rows_reach_the_requested_length(tiny_model_dir: Path) -> None:
    from smoltune.data.builtin import generate_rows
    from smoltune.data.prompts import to_prompt_completion
    from smoltune.data.tokens import load_tokenizer, tokenize_rows

    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = [to_prompt_completion(r) for r in generate_rows(40, seed=1)]
    stretched = scaling.stretched_rows(tokenizer, rows, length=128, count=4)
    lengths = [len(r["input_ids"]) for r in tokenize_rows(tokenizer, stretched, 4096, mask_prompt=True)]
    assert all(120 <= n <= 136 for n in lengths), lengths
    assert len({r["prompt"] for r in stretched}) == 4


@pytest.mark.slow
def test_bench_runs_all_three_contenders(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(BENCH / "run.py"), "--model", str(tiny_model_dir), "--steps", "2", "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures["contenders"]) == {"trl", "unsloth", "smoltune"}
    for result in figures["contenders"].values():
        assert result["steps"] == 2 and result["tokens"] > 0 and len(result["losses"]) == 2
    # All three trained on the same rows: the same real tokens, and losses within the bench's tolerance.
    assert len({r["tokens"] for r in figures["contenders"].values()}) == 1
    summary = figures["summary"]
    assert summary["faster_baseline"] in {"trl", "unsloth"} and summary["speed_ratio"] > 0
    assert all(gap <= verdicts.LOSS_TOLERANCE for gap in summary["loss_gap"].values())
    assert "speed: smoltune" in completed.stdout and "(c) smoltune" in completed.stdout
