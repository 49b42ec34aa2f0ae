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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--model", default="auto")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE overrides of configs/default.yaml")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from smoltune.config import load_config
    from smoltune.data.stage import prepare_dataset
    from smoltune.evaluate.stage import evaluate_tuned
    from smoltune.files import write_jsonl
    from smoltune.train.spec import TrainSpec
    from smoltune.train.trainer import train

    config = load_config(ROOT / "configs" / "default.yaml", args.set)
    work = Path(args.out) / args.name
    work.mkdir(parents=True, exist_ok=True)
    model, what = model_folder(args.model)
    from smoltune.data.stage import load_rows

    raw = write_jsonl(work / "raw.jsonl", load_rows(config.data))
    prepared = prepare_dataset(raw, config.data, work)
    trained = train(TrainSpec(model, prepared.train_file, str(work / "train"), config.train.model_dump(mode="json")))
    started = time.perf_counter()
    figures, _, _ = evaluate_tuned(
        model,
        trained.output_dir,
        trained.mode,
        prepared.eval_file,
        config.eval,
        config.data.template,
        config.train.max_seq_length,
        precision=trained.precision,
    )
    record = {
        "name": args.name,
        "model": what,
        "overrides": args.set,
        "train": {k: v for k, v in trained.to_dict().items() if k not in ("step_log", "settings")},
        "precision_reason": trained.settings["precision"],
        "segment_kernel": trained.settings["fast_path"]["segment_kernel"],  # packed rows' attention (hf backend)
        "segment_kernel_reason": trained.settings["segment_kernel"],
        "evaluate_seconds": round(time.perf_counter() - started, 2),
        "eval": figures.model_dump(),
    }
    (Path(args.out) / f"job-{args.name}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("name", "evaluate_seconds")} | {"train_s": trained.train_seconds}))


if __name__ == "__main__":
    main()
