"""A tiny randomly initialised llama and tokenizer, built in about a second, for training tests."""

from __future__ import annotations

from pathlib import Path

from smoltune.data.builtin import generate_rows
from smoltune.data.prompts import format_prompt

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_model(target: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rows = generate_rows(300, seed=1)
    texts = [format_prompt(r) + r["output"] for r in rows]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def tiny_overrides(model_dir: Path, runs_dir: Path) -> list[str]:
    """`--set` overrides (on configs/smoke.yaml) that make a whole job run in seconds on the tiny model."""
    return [
        f"model.source={model_dir}",
        f"output.runs_dir={runs_dir}",
        "data.num_samples=12",
        "data.eval_samples=6",
        "train.max_steps=2",
        "train.warmup_steps=1",
        "train.max_seq_length=256",
        "eval.max_new_tokens=3",
        "eval.answer_max_new_tokens=3",
    ]
