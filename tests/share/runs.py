"""Finished run folders for the sharing tests, built from real stage records and `build_summary` (no training):
a LoRA adapter drawn at random on the tiny llama, the run's report files, and optionally a merged model and a
DPO stage. What the flow would write, minus the minutes of training."""

from __future__ import annotations

from pathlib import Path

from smoltune.config import DataConfig, ModelConfig, OutputConfig, PipelineConfig, PreferenceConfig, TrainConfig
from smoltune.files import atomic_write_json, atomic_write_text
from smoltune.pipeline.runs import RunRecords, build_summary, with_preference, write_config
from smoltune.records import (
    CheckSummary,
    EvalFigures,
    Evaluated,
    Exported,
    Fetched,
    PreferenceEvaluated,
    PreferenceFigures,
    PreferencePairs,
    PreferencePrepared,
    PreferenceTrained,
    Prepared,
    PromotionDecision,
    ResolvedModel,
    Trained,
    TrainResult,
    Validated,
)

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DATASET_ID = "yahma/alpaca-cleaned"
TRAIN_KEY = "0123456789abcdef0123"
LOSS_CURVE_BYTES = b"\x89PNG\r\n\x1a\n stand-in image"


def make_adapter(base_dir: Path, target: Path) -> Path:
    """A LoRA adapter saved by PEFT (which also writes its template README.md), weights drawn at random."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(target)
    return target


def _train_result(output_dir: Path, mode: str = "lora") -> TrainResult:
    return TrainResult(
        backend="hf", backend_reason="cpu", mode=mode, lora_rank=16 if mode == "lora" else None, device="cpu",
        trainable_params=4_884_480, total_params=139_399_488, steps=20, train_seconds=12.5, tokens_seen=9000,
        tokens_per_second=720.0, peak_memory_mb=2000.0, losses=[2.5, 1.9, 1.4], step_log=[],
        output_dir=str(output_dir), saved_mb=18.7, precision="bf16", started_at="2026-12-02T05:00:00.000+00:00",
    )  # fmt: skip


def _records(root: Path, base: ResolvedModel, data_source: str, trained_dir: Path) -> RunRecords:
    data = root / "data"
    data.mkdir(exist_ok=True)
    check = dict(expectation="expect_x", unexpected_count=3, example_rows=[4, 9])
    checks = [
        CheckSummary(check_id="columns", name="columns present", severity="critical", success=True, **check),
        CheckSummary(check_id="duplicates", name="duplicate questions", severity="warning", success=False, **check),
    ]
    figures = EvalFigures(
        eval_rows=40, eval_loss_base=2.9, eval_loss_tuned=1.2, perplexity_base=18.17, perplexity_tuned=3.32,
        checked_rows=40, accuracy_base=0.125, accuracy_tuned=0.55, exact_match_base=0.1, exact_match_tuned=0.5,
    )  # fmt: skip
    return RunRecords(
        model=base,
        fetched=Fetched(
            source=data_source,
            rows_file=str(data / "rows.jsonl"),
            sha256="cd" * 32,
            rows=500,
            identity="hub commit " + "e" * 40,
        ),  # fmt: skip
        validated=Validated(success=True, row_count=500, checks=checks, report_file=str(data / "validation.json")),
        prepared=Prepared(
            train_file=str(data / "train.jsonl"),
            eval_file=str(data / "eval.jsonl"),
            train_sha256="1" * 64,
            eval_sha256="2" * 64,
            train_rows=100,
            eval_rows=40,
        ),  # fmt: skip
        trained=Trained(result=_train_result(trained_dir, "lora" if trained_dir.name == "adapter" else "full")),
        evaluated=Evaluated(
            figures=figures,
            heldout_sha256="2" * 64,
            generations_file=str(data / "gen.json"),
            answers_file=str(data / "answers.json"),
        ),  # fmt: skip
    )


def hub_base(root: Path, license_id: str | None = "apache-2.0") -> ResolvedModel:
    """A base model from the hub whose folder carries the release's README.md metadata."""
    folder = root / "base"
    folder.mkdir(parents=True, exist_ok=True)
    if license_id:
        (folder / "README.md").write_text(f"---\nlicense: {license_id}\nlanguage:\n- en\n---\n# base\n")
    return ResolvedModel(
        source=BASE_ID, kind="hub", path=str(folder), sha256="ab" * 32, description=f"hub {BASE_ID}@" + "c" * 40,
        revision="c" * 40, hub_id=BASE_ID,
    )  # fmt: skip


def make_run(
    root: Path,
    adapter_src: Path | None,
    base: ResolvedModel,
    data_source: str = DATASET_ID,
    merged: bool = False,
    promoted: bool = True,
) -> Path:
    """A finished run folder (summary.json, config.yaml, report files) whose trained folder sits in a cache
    folder, with a checkpoint, an optimizer state and a hidden cache inside it that must never be published.
    `adapter_src` None: a full fine-tune, whose folder holds a whole model."""
    import shutil

    kind = "adapter" if adapter_src else "model"
    trained_dir = root / "_cache" / "train" / TRAIN_KEY / kind
    if adapter_src:
        shutil.copytree(adapter_src, trained_dir)
    else:
        trained_dir.mkdir(parents=True)
        (trained_dir / "config.json").write_text('{"model_type": "llama"}')
        (trained_dir / "model.safetensors").write_bytes(b"weights")
    (trained_dir / "checkpoint-20").mkdir()
    (trained_dir / "checkpoint-20" / "optimizer.pt").write_bytes(b"state")
    (trained_dir / "optimizer.pt").write_bytes(b"state")
    (trained_dir / ".cache").mkdir()
    (trained_dir / ".cache" / "x").write_bytes(b"cache")
    records = _records(root, base, data_source, trained_dir)
    if merged:
        merged_dir = root / "_cache" / "export" / "fedcba9876" / "merged"
        merged_dir.mkdir(parents=True)
        (merged_dir / "config.json").write_text('{"model_type": "llama"}')
        records = RunRecords(**{**records.__dict__, "exported": Exported(merged_dir=str(merged_dir))})
    config = PipelineConfig(
        model=ModelConfig(source=base.source),
        data=DataConfig(source=data_source),
        train=TrainConfig(mode="lora" if adapter_src else "full"),
        output=OutputConfig(),
    )
    return _write_run(root / "runs" / "r1", config, records, promoted)


def _promotion(promoted: bool) -> PromotionDecision:
    return PromotionDecision(promoted=promoted, key="k", metric="accuracy", value=0.55, reason="better")


def _write_run(run_dir: Path, config: PipelineConfig, records: RunRecords, promoted: bool) -> Path:
    run_dir.mkdir(parents=True)
    write_config(run_dir, config)
    summary = build_summary(run_dir, config, records, _promotion(promoted))
    _write_reports(run_dir, summary)
    return run_dir


def _write_reports(run_dir: Path, summary: dict) -> None:
    atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_text(run_dir / "report.md", "# report\n\n![Loss curve](loss_curve.png)\n")
    atomic_write_text(run_dir / "report.html", "<html>report</html>")
    (run_dir / "loss_curve.png").write_bytes(LOSS_CURVE_BYTES)
    atomic_write_text(run_dir / "generations.json", "[]")


def make_dpo_run(root: Path, adapter_src: Path, base: ResolvedModel) -> Path:
    """A finished preference run: the SFT adapter and the DPO adapter, each in its own cache folder."""
    import shutil

    sft_dir = root / "_cache" / "train" / TRAIN_KEY / "adapter"
    dpo_dir = root / "_cache" / "train_preference" / "99887766554433221100" / "adapter"
    shutil.copytree(adapter_src, sft_dir)
    shutil.copytree(adapter_src, dpo_dir)
    records = _records(root, base, "embedded", sft_dir)
    config = PipelineConfig(model=ModelConfig(source=base.source), preference=PreferenceConfig())
    run_dir = root / "runs" / "dpo1"
    run_dir.mkdir(parents=True)
    write_config(run_dir, config)
    gate = records.validated
    pairs = PreferencePairs(source="embedded", shape="standard", pairs_file="p.jsonl", sha256="3" * 64, pairs=64,
                            identity="built-in", on_policy=20)  # fmt: skip
    prepared = PreferencePrepared(train_file="t", eval_file="e", train_sha256="4" * 64, eval_sha256="5" * 64,
                                  train_pairs=48, eval_pairs=16)  # fmt: skip
    dpo = PreferenceTrained(result=_train_result(dpo_dir), sft_key=TRAIN_KEY)
    figures = PreferenceFigures(
        eval_pairs=16, beta=0.1, reward_accuracy=0.8125, reward_margin=0.42, chosen_logp_change=0.1,
        rejected_logp_change=-2.0, eval_loss={"base": 2.9, "sft": 1.2, "dpo": 1.25},
        accuracy={"base": 0.125, "sft": 0.55, "dpo": 0.6}, checked_rows=40, eval_seconds=3.0,
    )  # fmt: skip
    evaluated = PreferenceEvaluated(figures=figures, as_tuned=records.evaluated.figures, heldout_sha256="2" * 64,
                                    generations_file="g", pairs_file="p")  # fmt: skip
    decisions = [_promotion(False), _promotion(True)]
    summary = with_preference(
        build_summary(run_dir, config, records, decisions[-1]), pairs, gate, prepared, None, dpo, evaluated, decisions
    )
    _write_reports(run_dir, summary)
    return run_dir
