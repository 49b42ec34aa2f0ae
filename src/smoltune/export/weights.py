"""Exports users can run elsewhere: the base model with the adapter merged in (16-bit safetensors), and
that merged model as a GGUF file (F16 or Q8_0) for llama.cpp-style runtimes.

    python -c "from smoltune.export.weights import export_merged; export_merged('BASE', 'ADAPTER', 'OUT')"
    python -c "from smoltune.export.weights import export_gguf; export_gguf('OUT', 'model.gguf', 'q8_0')"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smoltune.data.tokens import load_tokenizer
from smoltune.errors import ExportError
from smoltune.files import atomic_dir


def export_merged(base_path: str, adapter_dir: str, out_dir: str | Path, trust_remote_code: bool = False) -> Path:
    """Merge the LoRA adapter into the base weights (in fp32, then stored as bf16) and save a plain
    transformers model folder that `AutoModelForCausalLM.from_pretrained` loads without peft."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        base_path, dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().to(torch.bfloat16)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(base_path, trust_remote_code).save_pretrained(tmp)
    return Path(out_dir)


GGUF_MODEL_TYPES = ("llama",)  # architectures whose tensor names the writer below maps
GGUF_FILE_TYPES = {"f16": 1, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_MOSTLY_F16 / _Q8_0


def _permute_for_gguf(weight: Any, heads: int) -> Any:
    """llama.cpp stores q/k projections with rotary halves interleaved per head; transformers' GGUF loader
    undoes exactly this permutation."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _gguf_tensor(name: str, weight: Any, config: Any, qtype: str) -> tuple[Any, Any]:
    """(data, raw dtype) for one tensor: norms stay F32, matrices become F16 or Q8_0."""
    import gguf
    import numpy as np

    if name.endswith("attn_q.weight"):
        weight = _permute_for_gguf(weight, config.num_attention_heads)
    elif name.endswith("attn_k.weight"):
        weight = _permute_for_gguf(weight, config.num_key_value_heads)
    if weight.ndim == 1:
        return weight.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype == "q8_0":
        kind = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(weight.astype(np.float32), kind), kind
    return weight.astype(np.float16), gguf.GGMLQuantizationType.F16


def _add_llama_metadata(writer: Any, config: Any, qtype: str) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(GGUF_FILE_TYPES[qtype])


def pre_tokenizer_name(vocab: dict[str, int]) -> str:
    """llama.cpp's name for how text is split before BPE (`tokenizer.ggml.pre`), which it needs to tokenize
    like the original: SmolLM's tokenizer (49,152 tokens, ChatML specials) is "smollm" in its converter's table;
    any other byte-level BPE gets "default", the GPT-2 split."""
    return "smollm" if len(vocab) == 49152 and "<|im_start|>" in vocab else "default"


def _add_tokenizer(writer: Any, model_dir: Path) -> None:
    """The byte-level BPE vocabulary, merges and special tokens, as llama.cpp's 'gpt2' tokenizer model."""
    import gguf

    tokenizer = load_tokenizer(str(model_dir))
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(vocab))
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(writer, quiet=True)


def _write_gguf(path: Path, model_dir: Path, config: Any, qtype: str) -> None:
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import load_file

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    writer = gguf.GGUFWriter(path, "llama")
    _add_llama_metadata(writer, config, qtype)
    _add_tokenizer(writer, model_dir)
    # bf16 has no numpy dtype: read with torch and widen to fp32 before converting.
    state = {k: v.to(torch.float32).numpy() for k, v in load_file(model_dir / "model.safetensors").items()}
    for hf_name, weight in state.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"export.gguf: no GGUF name for tensor {hf_name} of {model_dir}")
        data, kind = _gguf_tensor(gguf_name, np.ascontiguousarray(weight), config, qtype)
        writer.add_tensor(gguf_name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def check_exports(model_dir: str | Path, gguf_requested: bool) -> None:
    """Before any training: the base model's architecture is one every requested export can write (the GGUF
    writer maps llama tensor names only), so a job never trains for an export that would then fail."""
    import json

    if not gguf_requested:
        return
    model_type = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type not in GGUF_MODEL_TYPES:
        raise ExportError(
            f"export.gguf: GGUF export supports {', '.join(GGUF_MODEL_TYPES)} models and this model is "
            f"{model_type!r}; set export.gguf=false (export.merged still works)"
        )


def export_gguf(merged_dir: str | Path, out_file: str | Path, qtype: str = "f16") -> Path:
    """Write a llama-architecture model folder (the merged export) as one GGUF file (F16 or Q8_0).
    Tied output weights are stored once, as the token embedding, as llama.cpp expects."""
    from transformers import AutoConfig

    model_dir = Path(merged_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in GGUF_MODEL_TYPES:
        raise ExportError(
            f"export.gguf: GGUF export supports {GGUF_MODEL_TYPES} models; {model_dir} is {config.model_type!r}"
        )
    target = Path(out_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    try:
        _write_gguf(partial, model_dir, config, qtype)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk or an error midway never leaves a half-written file
        raise
    partial.replace(target)  # complete files only
    return target
