"""One training + evaluation of the seed job through smoltune's library entry points (no Prefect), for the GPU
check (bench/gpu_check.py). Writes OUT/job-NAME.json.

    python bench/gpu_job.py --name seed-bf16 --set train.precision=bf16 --out runs/gpu-check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TWIN_FILES = ROOT / ".whl" / "model"  # SmolLM2-135M's config.json and tokenizer files, carried by `make gpu-wheels`


def model_folder(choice: str) -> tuple[str, str]:
    """(folder, what it is): the given folder, else the embedded seed weights, else SmolLM2-135M's shapes and
    tokenizer with random weights (the seed weights are too large to carry to a machine without network)."""
    if choice != "auto":
        return choice, choice
    try:
        from smoltune.model import resolve_model

        return resolve_model("embedded").path, "embedded SmolLM2-135M-Instruct"
    except Exception:  # noqa: BLE001 - any reason the embedded weights are unavailable leads to the twin
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        target = Path("/tmp/smollm2-twin")
        if not (target / "model.safetensors").exists():
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TWIN_FILES))
            model.save_pretrained(target)
            for file in TWIN_FILES.iterdir():
                if file.name != "config.json":
                    (target / file.name).write_bytes(file.read_bytes())
        return str(target), "SmolLM2-135M shapes and tokenizer, random weights"


def run_job(name: str, model_choice: str, overrides: list[str], out: Path) -> dict:
    """Train (in its own process, as the pipeline does) and evaluate one job; its record."""
    import sys

    from smoltune.config import load_config
    from smoltune.data.stage import load_rows, prepare_dataset
    from smoltune.evaluate.stage import EvalRequest, evaluate_tuned
    from smoltune.files import write_jsonl
    from smoltune.train.runner import train_in_subprocess
    from smoltune.train.spec import TrainSpec

    config = load_config(ROOT / "configs" / "default.yaml", overrides)
    work = out / name
    work.mkdir(parents=True, exist_ok=True)
    model, what = model_folder(model_choice)
    prepared = prepare_dataset(write_jsonl(work / "raw.jsonl", load_rows(config.data)), config.data, work)
    # Training in a child process: Unsloth (the CUDA backend) patches transformers' Llama classes process-wide,
    # and the evaluation below needs them as transformers made them (its prefix cache is a DynamicCache).
    spec = TrainSpec(model, prepared.train_file, str(work / "train"), config.train.model_dump(mode="json"))
    trained = train_in_subprocess(spec)
    started = time.perf_counter()
    request = EvalRequest(model, trained.output_dir, trained.mode, prepared.eval_file, config.eval,
                          config.data.template, config.train.max_seq_length, precision=trained.precision)  # fmt: skip
    figures, _, _ = evaluate_tuned(request)
    return {
        "name": name,
        "model": what,
        "overrides": overrides,
        "train": {k: v for k, v in trained.to_dict().items() if k not in ("step_log", "settings")},
        "precision_reason": trained.settings["precision"],
        "segment_kernel": trained.settings["fast_path"]["segment_kernel"],  # packed rows' attention (hf backend)
        "segment_kernel_reason": trained.settings["segment_kernel"],
        "evaluate_seconds": round(time.perf_counter() - started, 2),
        "evaluated_beside_unsloth": "unsloth" in sys.modules,
        "eval": figures.model_dump(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--model", default="auto")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE overrides of configs/default.yaml")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    record = run_job(args.name, args.model, args.set, Path(args.out))
    (Path(args.out) / f"job-{args.name}.json").write_text(json.dumps(record, indent=2))
    summary = {"name": args.name, "evaluate_seconds": record["evaluate_seconds"]}
    print(json.dumps(summary | {"train_s": record["train"]["train_seconds"]}))


if __name__ == "__main__":
    main()
