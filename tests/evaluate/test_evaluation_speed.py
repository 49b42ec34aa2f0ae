"""The fast evaluation computes what the plain one does: prefix-cached, length-sorted greedy generation gives each
row the tokens `generate` gives it alone; the batched labelled-only eval loss equals the model's own per-row loss;
decode attention equals SDPA; merging the adapter (fp32) leaves the tuned figures unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from smoltune.data.tokens import IGNORE_INDEX
from smoltune.evaluate.attention import decode_attention, register_decode_attention
from smoltune.evaluate.generation import BaseAndTuned, generate_answers
from smoltune.evaluate.loss import mean_answer_loss
from smoltune.evaluate.prefix import common_prefix_length, length_sorted_batches

# Rows sharing a template prefix, of different lengths (so batches need padding), one of them the prefix + 1 token.
PROMPTS = [
    "Below is an instruction.\n\n### Instruction:\nAdd the two numbers.\n\n### Input:\n3 and 4\n\n### Response:\n",
    "Below is an instruction.\n\n### Instruction:\nSay hi.\n\n### Response:\n",
    "Below is an instruction.\n\n### Instruction:\nSort these numbers from smallest to largest.\n\n### Input:\n"
    "9, 2, 71, 5\n\n### Response:\n",
    "Below is an instruction.\n\n### Instruction:\nX",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_decode_attention())
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    return model.eval(), plain.eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_prefix_and_batch_helpers() -> None:
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3], [1, 2, 5]], limit=9) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]], limit=2) == 2  # capped: each row keeps a token of its own
    assert common_prefix_length([[7, 1], [8, 1]], limit=5) == 0 and common_prefix_length([], 3) == 0
    assert length_sorted_batches([5, 1, 4, 2, 3], 2) == [[1, 3], [4, 2], [0]]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_generation_equals_each_row_alone(tiny: tuple, batch_size: int) -> None:
    model, plain, tokenizer = tiny
    expected = []
    for prompt in PROMPTS:  # plain transformers, one row at a time: no padding, no shared cache
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = plain.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    assert generate_answers(model, tokenizer, PROMPTS, 12, batch_size) == expected
    assert generate_answers(model, tokenizer, [], 12, batch_size) == []


def test_eval_loss_equals_the_models_own_loss(tiny: tuple) -> None:
    model, plain, tokenizer = tiny
    examples = []
    for prompt, answer in zip(PROMPTS, ["7", "hi there", "2, 5, 9, 71", "Y"], strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append({"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids})
    total = tokens = 0.0
    with torch.no_grad():
        for e in examples:  # the model's own mean loss per row, weighted back to a token sum
            out = plain(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]))
            count = sum(label != IGNORE_INDEX for label in e["labels"][1:])
            total, tokens = total + out.loss.item() * count, tokens + count
    for batch_size in (1, 2, 4):
        assert mean_answer_loss(model, examples, tokenizer.pad_token_id, batch_size) == pytest.approx(
            total / tokens, rel=1e-5
        )
    assert math.isnan(mean_answer_loss(model, [], tokenizer.pad_token_id, 4))


@pytest.mark.parametrize("masked", [False, True])
def test_decode_attention_equals_sdpa(masked: bool) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = torch.nn.Module().eval()
    module.num_key_value_groups, module.is_causal = 3, True
    query, key, value = torch.randn(4, 9, 1, 16), torch.randn(4, 3, 7, 16), torch.randn(4, 3, 7, 16)
    mask = None
    if masked:  # left padding: row i ignores its first i cached positions
        mask = torch.ones(4, 1, 1, 7, dtype=torch.bool)
        for i in range(4):
            mask[i, ..., :i] = False
    ours, _ = decode_attention(module, query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_merged_and_kept_adapters_give_the_same_figures(tiny_model_dir: Path, tmp_path: Path) -> None:
    """fp32 weights get the adapter merged for the tuned figures; the figures equal those of the adapter kept."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_decode_attention()),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    ).eval()
    kept = generate_answers(model, tokenizer, PROMPTS, 8, 2)
    models = BaseAndTuned(model)
    with models.base():
        base = generate_answers(models.model, tokenizer, PROMPTS, 8, 2)
    assert not hasattr(models.model, "disable_adapter")  # merged: a plain transformers model now
    assert generate_answers(models.model, tokenizer, PROMPTS, 8, 2) == kept != base
