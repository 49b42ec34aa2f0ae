"""Run folders: one per flow run, named by time and a short random id so concurrent runs never clash.

runs/20261129-101500-3fa2c1/
    config.yaml  summary.json  report.md  report.html  loss_curve.png  generations.json
    data/ validation/ train/ evaluation/   (links to the cached stage folders under runs/_cache/)
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from smoltune.config import OutputConfig, PipelineConfig, check_config
from smoltune.errors import ConfigError
from smoltune.evaluate.prompts import load_eval_prompts
from smoltune.files import atomic_write_text
from smoltune.pipeline.settings import quiet_user_error_tracebacks, use_hub_token
from smoltune.records import (
    Evaluated,
    Exported,
    Fetched,
    PreferenceEvaluated,
    PreferencePairs,
    PreferencePrepared,
    PreferenceTrained,
    Prepared,
    PromotionDecision,
    ReferenceScored,
    ResolvedModel,
    Trained,
    Validated,
)
from smoltune.redaction import redact_tree


def new_run_name() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def create_run_dir(output: OutputConfig) -> Path:
    """Make the run folder; an explicit `output.run_name` that already exists is an error, not an overwrite."""
    run_dir = Path(output.runs_dir).resolve() / (output.run_name or new_run_name())
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConfigError([f"output.run_name: run folder {run_dir} already exists; pick another name"]) from None
    return run_dir


def redacted_dump(config: PipelineConfig) -> dict[str, Any]:
    """The config as JSON data, with URL credentials and tokens redacted in every field (sources,
    `output.notify_server`, tracking and hub settings alike)."""
    return redact_tree(config.model_dump(mode="json"))  # type: ignore[return-value]


def write_config(run_dir: Path, config: PipelineConfig) -> Path:
    """The exact configuration of the run, reloadable with `smoltune run --config` (a source URL that carried
    a token is written redacted: put the token back, or better, serve the data without one)."""
    return atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(redacted_dump(config), sort_keys=False))


def begin_flow_run(config: PipelineConfig, source: str) -> tuple[PipelineConfig, Path]:
    """What every flow does first, so that a run started from the Prefect API, the UI or a schedule is the run
    the CLI would start: the CLI's cross-field checks (every problem at once, before anything runs) and
    absolute paths, one-line user errors in Prefect's logs, the hub token from its Secret block, and the run
    folder holding the exact configuration. Returns the checked config and the run folder."""
    config = check_config(config, source)
    load_eval_prompts(config.eval.prompts_file)  # parsed now: a bad file must not cost a whole training
    quiet_user_error_tracebacks()
    use_hub_token(config.model.hub_token_secret)
    run_dir = create_run_dir(config.output)
    write_config(run_dir, config)
    return config, run_dir


class StageTimer:
    """Wall seconds per stage, for the summary: `with timer("train"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - started, 2)


def saved_artifacts(trained: Trained, exported: Exported | None) -> dict[str, Any]:
    """Where the trained weights are: `adapter_dir` / `adapter_mb` for LoRA, `model_dir` for full, and exports.
    Every path comes from a record whose outputs the cache checked, so none of them is missing."""
    result = trained.result
    saved: dict[str, Any] = {"saved_mb": result.saved_mb}
    if result.mode == "lora":
        saved.update(adapter_dir=result.output_dir, adapter_mb=result.saved_mb)
    else:
        saved["model_dir"] = result.output_dir
    if exported is not None:
        saved.update({k: v for k, v in (("merged_dir", exported.merged_dir), ("gguf_file", exported.gguf_file)) if v})
    return saved


@dataclass(frozen=True)
class RunRecords:
    """The records of one finetune run, in pipeline order."""

    model: ResolvedModel
    fetched: Fetched
    validated: Validated
    prepared: Prepared
    trained: Trained
    evaluated: Evaluated
    exported: Exported | None = None

    def stage_folders(self) -> dict[str, str]:
        """Link name in the run folder -> stage folder."""
        folders = {
            "data": self.prepared.folder,
            "validation": self.validated.folder,
            "train": self.trained.folder,
            "evaluation": self.evaluated.folder,
        }
        return folders | ({"export": self.exported.folder} if self.exported else {})


_BOOKKEEPING = {"key", "folder"}


def build_summary(
    run_dir: Path,
    config: PipelineConfig,
    records: RunRecords,
    promotion: PromotionDecision | None = None,
    stage_seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The machine-readable record of a run (`summary.json`); the report is rendered from it."""
    fetched, prepared, result = records.fetched, records.prepared, records.trained.result
    return {
        "run_name": run_dir.name,
        "run_dir": str(run_dir),
        "config": redacted_dump(config),
        "model": records.model.model_dump(mode="json", exclude=_BOOKKEEPING),
        "data": {
            "source": fetched.source,
            "sha256": fetched.sha256,
            "identity": fetched.identity,
            "note": fetched.note,
            "source_rows": fetched.rows,
            "train_rows": prepared.train_rows,
            "eval_rows": prepared.eval_rows,
            "heldout_sha256": prepared.eval_sha256,
            "split_note": prepared.note,
        },
        "validation": records.validated.model_dump(mode="json", exclude=_BOOKKEEPING),
        "train": {k: v for k, v in asdict(result).items() if k not in ("output_dir", "saved_mb")},
        "eval": records.evaluated.figures.model_dump(mode="json"),
        "artifacts": {
            **saved_artifacts(records.trained, records.exported),
            "report": str(run_dir / "report.md"),
            "report_html": str(run_dir / "report.html"),
            "generations": str(run_dir / "generations.json"),
        },
        "promotion": promotion.model_dump(mode="json") if promotion else None,
        "stage_seconds": stage_seconds or {},
    }


def with_preference(
    summary: dict[str, Any],
    pairs: PreferencePairs,
    gated: Validated,
    prepared: PreferencePrepared,
    reference: ReferenceScored | None,
    dpo: PreferenceTrained,
    evaluated: PreferenceEvaluated,
    decisions: list[PromotionDecision],
) -> dict[str, Any]:
    """`summary` with the preference stages' part (the report's preference section is rendered from it); the run's
    adapter is the DPO one (what `smoltune serve` and `smoltune chat` load from the run folder), the SFT one
    named beside it."""
    # An export (merged model, GGUF) is of the SFT adapter: named as such beside the DPO adapter.
    exported = {
        f"sft_{k}": summary["artifacts"].pop(k) for k in ("merged_dir", "gguf_file") if k in summary["artifacts"]
    }
    artifacts = {
        **summary["artifacts"],
        **exported,
        "adapter_dir": dpo.result.output_dir,
        "adapter_mb": dpo.result.saved_mb,
        "sft_adapter_dir": summary["artifacts"].get("adapter_dir"),
    }
    return summary | {
        "artifacts": artifacts,
        "preference": {
            "pairs": pairs.model_dump(mode="json", exclude=_BOOKKEEPING),
            "validation": gated.model_dump(mode="json", exclude=_BOOKKEEPING),
            "train_pairs": prepared.train_pairs,
            "eval_pairs": prepared.eval_pairs,
            "split_note": prepared.note,
            "reference": reference.model_dump(mode="json", exclude=_BOOKKEEPING) if reference else None,
            "train": {k: v for k, v in asdict(dpo.result).items() if k != "saved_mb"},
            "eval": evaluated.figures.model_dump(mode="json"),
            "promotion": [d.model_dump(mode="json") for d in decisions],
        },
    }
