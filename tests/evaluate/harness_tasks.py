"""A tiny lm-evaluation-harness task folder for tests: six addition questions, scored by generation (exact
match), by log-likelihood multiple choice, and by the perplexity of the answer (a figure every weight moves).
Its data is written here; nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

ROWS = [{"q": f"What is {i} plus {i}?", "a": str(2 * i), "choices": [str(2 * i), str(2 * i + 1), str(i)], "gold": 0}
        for i in range(1, 7)]  # fmt: skip

GENERATE = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

CHOICE = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

LOGLIKELIHOOD = """task: tiny_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "Q: {{{{q}}}}\\nA:"
doc_to_target: " {{{{a}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
"""


def write_task_folder(folder: Path) -> Path:
    """`folder` with tiny_gen.yaml, tiny_mc.yaml, tiny_ll.yaml and their data, rows.jsonl (by absolute path)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "tiny_gen.yaml").write_text(GENERATE.format(data=data))
    (folder / "tiny_mc.yaml").write_text(CHOICE.format(data=data))
    (folder / "tiny_ll.yaml").write_text(LOGLIKELIHOOD.format(data=data))
    return folder
