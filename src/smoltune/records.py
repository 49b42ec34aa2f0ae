"""Typed stage records: what each stage hands to the next, stored as JSON in its stage folder and as the
Prefect task result (Prefect's JSON serializer, never pickle).

    python -c "from smoltune.records import Prepared; print(Prepared.model_json_schema()['required'])"

A record names its files by absolute path; `outputs()` lists the ones that must still exist for the record
to be trusted. The cache checks them before every reuse, so a deleted adapter, merged model or answers file
makes its stage run again instead of a summary pointing at nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    # Frozen: a record is a fact about a finished stage; extra="forbid": no bookkeeping keys sneak in.
    model_config = ConfigDict(frozen=True, extra="forbid")


class StageRecord(_Record):
    key: str = Field("", description="The stage folder's name: a hash of everything the stage depends on.")
    folder: str = Field("", description="The stage folder (under output.cache_dir).")

    def outputs(self) -> list[str]:
        """Paths that must exist for this record to be reused."""
        return []


class ResolvedModel(StageRecord):
    source: str = Field(description="model.source as configured.")
    kind: Literal["embedded", "local", "hub"]
    path: str = Field(description="Local Hugging Face folder to load with from_pretrained.")
    sha256: str = Field(description="Content hash of the weights (the embedded GGUF, or every file).")
    description: str = Field(description="What the weights are, for the report.")
    revision: str | None = Field(None, description="Hub commit the weights came from.")
    hub_id: str | None = Field(
        None, description="The hub id these weights are (adapters record it as their base, loadable anywhere)."
    )
    trust_remote_code: bool = False
    note: str | None = Field(None, description="Anything the report must say (e.g. used offline).")

    def outputs(self) -> list[str]:
        return [self.path]


class Fetched(StageRecord):
    source: str = Field(description="data.source as configured (URL credentials removed).")
    rows_file: str = Field(description="The normalised rows as JSON Lines.")
    sha256: str = Field(description="Content hash of rows_file.")
    rows: int
    identity: str = Field(description="What identified the source's content: file hash, URL content, hub commit.")
    note: str | None = Field(None, description="Anything the report must say (e.g. offline: cached copy).")

    def outputs(self) -> list[str]:
        return [self.rows_file]


class CheckSummary(_Record):
    """One Great Expectations check as the report shows it (mirrors data_checks.suite.CheckResult)."""

    check_id: str
    name: str
    expectation: str
    severity: Literal["critical", "warning"]
    success: bool
    unexpected_count: int = 0
    example_rows: list[int] = Field(default_factory=list)
    observed: Any = None
    error: str | None = None


class Validated(StageRecord):
    success: bool
    row_count: int
    checks: list[CheckSummary]
    data_docs: str | None = Field(None, description="Great Expectations Data Docs (index.html).")
    report_file: str = Field(description="validation.json with every check's outcome.")

    def outputs(self) -> list[str]:
        return [self.report_file, *([self.data_docs] if self.data_docs else [])]


class Prepared(StageRecord):
    validated_key: str = Field("", description="Key of the gate that passed these rows: a stricter gate retrains.")
    train_file: str
    eval_file: str
    train_sha256: str
    eval_sha256: str = Field(description="Identity of the held-out set: promotion compares only runs sharing it.")
    train_rows: int
    eval_rows: int
    note: str | None = Field(None, description="Fewer rows than asked for, if so (the report says it).")
    train_tokens_file: str | None = Field(
        None, description="The training rows' token ids, made once here (None: the training worker tokenises)."
    )
    train_tokens_sha256: str | None = None

    def outputs(self) -> list[str]:
        return [self.train_file, self.eval_file] + ([self.train_tokens_file] if self.train_tokens_file else [])


@dataclass
class TrainResult:
    """What a training run produced and measured; every field is JSON-serialisable."""

    backend: str
    backend_reason: str
    mode: str
    lora_rank: int | None  # the LoRA rank (train.lora.r); None in full fine-tuning
    device: str
    trainable_params: int
    total_params: int
    steps: int
    train_seconds: float
    tokens_seen: int
    tokens_per_second: float
    peak_memory_mb: float
    losses: list[float]
    step_log: list[dict[str, float]]
    output_dir: str
    saved_mb: float
    resumed_from_step: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # the compute precision trained in (smoltune.train.precision); evaluation uses it too
    processes: int = 1  # data-parallel processes (torchrun); peak_memory_mb is rank 0's
    host: str = ""  # the machine that trained (rank 0's), e.g. which Dask worker's host in a sweep
    started_at: str = ""  # when the training loop started (UTC, ISO 8601); it ran train_seconds from there

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params


class Trained(StageRecord):
    result: TrainResult

    def outputs(self) -> list[str]:
        return [self.result.output_dir]


class Exported(StageRecord):
    merged_dir: str | None = None
    gguf_file: str | None = None

    def outputs(self) -> list[str]:
        return [p for p in (self.merged_dir, self.gguf_file) if p]


class HarnessScore(_Record):
    """One lm-evaluation-harness metric of one task (or group), base vs tuned, with its standard errors."""

    task: str
    metric: str = Field(description="The harness's metric name, with ',FILTER' when the task filters its answers.")
    higher_is_better: bool | None = Field(None, description="As the harness says (None: it does not say).")
    base: float | None
    tuned: float | None
    base_stderr: float | None = None
    tuned_stderr: float | None = None
    samples: int | None = Field(None, description="Examples scored (after eval.harness.limit).")


class HarnessFigures(_Record):
    """What lm-evaluation-harness measured on base and tuned (eval.harness), and how to measure it again."""

    tasks: list[str]
    scores: list[HarnessScore]
    limit: int | None = None
    num_fewshot: int | None = None
    seconds: float = Field(description="Wall time of both harness runs.")
    lm_eval_version: str
    commands: dict[str, str] = Field(description="base / tuned: the lm_eval command line that gives these figures.")

    def score(self, task: str, metric: str) -> HarnessScore | None:
        return next((s for s in self.scores if s.task == task and s.metric == metric), None)


class EvalFigures(_Record):
    """Base vs tuned on the held-out rows (None where the data has no checkable answers)."""

    eval_rows: int
    eval_seconds: float | None = Field(None, description="Wall time of the evaluation, base and tuned, when computed.")
    eval_precision: str = Field("fp32", description="The precision it ran in (the training's).")
    eval_loss_base: float
    eval_loss_tuned: float
    perplexity_base: float
    perplexity_tuned: float
    checked_rows: int
    accuracy_base: float | None = None
    accuracy_tuned: float | None = None
    exact_match_base: float | None = None
    exact_match_tuned: float | None = None
    normalised_match_base: float | None = None
    normalised_match_tuned: float | None = None
    rouge_l_base: float | None = None
    rouge_l_tuned: float | None = None
    accuracy_by_family: dict[str, dict[str, float]] = Field(default_factory=dict)
    harness: HarnessFigures | None = Field(None, description="lm-evaluation-harness tasks (eval.harness), if run.")


class BaseEvaluated(StageRecord):
    """The base model measured on the held-out rows, the eval prompts and the harness tasks, apart from any
    adapter: a retraining (a new learning rate, say) never measures the base again."""

    base_file: str = Field(
        description="base.json: the base's eval loss, scores, held-out answers, prompt generations, seconds and "
        "lm-evaluation-harness run (null without eval.harness)."
    )
    heldout_sha256: str = Field(description="The held-out rows it was measured on.")
    precision: str = Field(description="The precision it ran in (the training's).")

    def outputs(self) -> list[str]:
        return [self.base_file]


class Evaluated(StageRecord):
    figures: EvalFigures
    heldout_sha256: str = Field(description="The held-out rows these figures were measured on.")
    generations_file: str = Field(description="Eval prompts answered by base and tuned.")
    answers_file: str = Field(description="Held-out rows answered by base and tuned.")

    def outputs(self) -> list[str]:
        return [self.generations_file, self.answers_file]


class PromotionDecision(_Record):
    promoted: bool
    key: str = Field(description="Registry entry: model, data source, held-out set and metric.")
    metric: str
    value: float
    current_value: float | None = None
    current_run: str | None = None
    reason: str
    not_compared: list[str] = Field(
        default_factory=list, description="Entries for the same model and data not compared, and why."
    )


class PreferencePairs(StageRecord):
    """The fetched preference pairs, normalised to instruction / input / chosen / rejected (+ source row)."""

    source: str = Field(description="preference.source as configured (URL credentials removed).")
    shape: str = Field(description="The rows' shape as detected (or set): standard, conversational, ...")
    pairs_file: str = Field(description="The normalised pairs as JSON Lines.")
    sha256: str = Field(description="Content hash of pairs_file.")
    pairs: int
    identity: str = Field(description="What identified the pairs: file hash, URL content, hub commit, SFT run.")
    on_policy: int = Field(0, description="Built-in pairs whose rejected answer is the SFT model's own wrong one.")
    note: str | None = None

    def outputs(self) -> list[str]:
        return [self.pairs_file]


class PreferencePrepared(StageRecord):
    validated_key: str = Field("", description="Key of the pair gate that passed these pairs.")
    train_file: str = Field(description="Training pairs: prompt (formatted), chosen, rejected.")
    eval_file: str = Field(description="Held-out pairs, never trained on.")
    train_sha256: str
    eval_sha256: str
    train_pairs: int
    eval_pairs: int
    note: str | None = None

    def outputs(self) -> list[str]:
        return [self.train_file, self.eval_file]


class ReferenceScored(StageRecord):
    """The reference (SFT) model's log-probabilities of each training pair's chosen and rejected answer."""

    train_file: str = Field(description="The training pairs with ref_chosen_logps / ref_rejected_logps added.")
    pairs: int
    precision: str = Field(description="The precision they were computed in (the SFT training's).")
    seconds: float

    def outputs(self) -> list[str]:
        return [self.train_file]


class KindAccuracy(_Record):
    """Reward accuracy on the held-out built-in pairs of one kind (smoltune.preference.evaluate.accuracy_by_kind)."""

    pairs: int
    reward_accuracy: float


class PreferenceFigures(_Record):
    """DPO against its reference (the SFT model) on held-out pairs, and base / SFT / DPO on the SFT held-out rows."""

    eval_pairs: int
    beta: float
    reward_accuracy: float = Field(description="Held-out pairs whose chosen answer gains more reward than rejected.")
    reward_margin: float = Field(description="Mean of beta * (chosen log-ratio - rejected log-ratio).")
    reward_accuracy_by_kind: dict[str, KindAccuracy] = Field(
        default_factory=dict,
        description="Built-in pairs only: reward accuracy (and pairs) where rejected is the SFT model's own wrong "
        "answer ('own_wrong') and where a plausible wrong answer stands in for a right one ('stand_in').",
    )
    chosen_logp_change: float = Field(description="Mean change of log p(chosen) from SFT to DPO.")
    rejected_logp_change: float = Field(description="Mean change of log p(rejected) from SFT to DPO.")
    eval_loss: dict[str, float] = Field(description="Eval loss on the SFT held-out rows: base, sft, dpo.")
    accuracy: dict[str, float | None] = Field(description="Checkable accuracy on the SFT held-out rows.")
    checked_rows: int
    eval_seconds: float


class PreferenceEvaluated(StageRecord):
    figures: PreferenceFigures
    as_tuned: EvalFigures = Field(description="The SFT evaluation's figures with DPO as the tuned model (promotion).")
    heldout_sha256: str = Field(description="The SFT held-out rows these figures were measured on.")
    generations_file: str = Field(description="Eval prompts answered by base, SFT and DPO.")
    pairs_file: str = Field(description="Held-out pairs with their log-probabilities under SFT and DPO.")

    def outputs(self) -> list[str]:
        return [self.generations_file, self.pairs_file]


class PreferenceTrained(StageRecord):
    result: TrainResult
    sft_key: str = Field(description="The SFT training this preference tuning started from (its reference).")

    def outputs(self) -> list[str]:
        return [self.result.output_dir]
