"""Data-parallel training under torchrun on the CPU: 2 processes of 1 thread each (gloo) train the same
global batches as one process, so the per-step losses and the adapter are equal within fp32 tolerance; only
rank 0 writes; a SIGKILL of the whole launch resumes with 2 processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from smoltune.config import DataConfig, PipelineConfig, TrainConfig, semantic_problems
from smoltune.data.builtin import generate_rows
from smoltune.data.stage import prepare_dataset
from smoltune.files import write_jsonl
from smoltune.records import TrainResult
from smoltune.train.checkpoints import latest_complete_checkpoint
from smoltune.train.distributed import Rank, join_commands, launch_command, launch_env
from smoltune.train.runner import train_in_subprocess
from smoltune.train.spec import TrainSpec
from tests.conftest import free_port
from tests.train.test_training import kill_after_step

# fp32: the equivalence is exact up to summation order; grad_accum 4 = 2 micro-batches per process.
SETTINGS = {
    "learning_rate": 1e-3,
    "warmup_steps": 1,
    "batch_size": 2,
    "grad_accum": 4,
    "max_seq_length": 256,
    "precision": "fp32",
}


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU (gloo) layout is what these tests check: on a machine with a GPU, the launched processes must
    not see it (two ranks on one card would fail; tests/train/test_gpu.py is where CUDA is tested)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def prepare(folder: Path, rows: int) -> dict:
    raw = write_jsonl(folder / "raw.jsonl", generate_rows(80, seed=3))
    return prepare_dataset(raw, DataConfig(num_samples=rows + 8, eval_samples=8, seed=0), folder)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """36 training rows: an epoch is 4 steps of 8 rows and a short step of 4 (2 per rank)."""
    return prepare(tmp_path_factory.mktemp("prepared"), 36)


def spec_for(model_dir: Path, prepared: dict, work_dir: Path, **train: object) -> TrainSpec:
    config = TrainConfig(**{**SETTINGS, **train})
    return TrainSpec(str(model_dir), prepared.train_file, str(work_dir), config.model_dump(mode="json"))


PAIRS: dict[str, tuple[TrainResult, TrainResult]] = {}


def train_pair(kind: str, model_dir: Path, prepared: dict, tmp: pytest.TempPathFactory) -> tuple:
    """(1 process, 2 processes) on the same spec, 6 steps (over an epoch's end), trained once per module.
    'micro-batches' turns pack_accumulation off, so each rank accumulates two micro-batches instead of one
    packed forward; 'one-row-tail' trains 33 rows, so an epoch's last step has one row: rank 1 gets none of it."""
    if kind not in PAIRS:
        speed = {"pack_accumulation": kind != "micro-batches"}
        if kind == "one-row-tail":
            prepared = prepare(tmp.mktemp("prepared-33"), 33)
        runs = []
        for processes in (1, 2):
            spec = spec_for(
                model_dir,
                prepared,
                tmp.mktemp(f"{kind}-{processes}"),
                max_steps=6,
                speed=speed,
                num_processes=processes,
            )
            runs.append(train_in_subprocess(spec))
        PAIRS[kind] = (runs[0], runs[1])
    return PAIRS[kind]


@pytest.fixture(scope="module", params=["packed", "micro-batches", "one-row-tail"])
def pair(request: pytest.FixtureRequest, tiny_model_dir: Path, prepared: dict, tmp_path_factory) -> tuple:
    return train_pair(request.param, tiny_model_dir, prepared, tmp_path_factory)


@pytest.mark.slow  # over 30 s: `make test-slow` (CI runs it after `make test`)
def test_two_processes_train_the_same_losses_and_adapter(pair: tuple[TrainResult, TrainResult]) -> None:
    one, two = pair
    assert (one.processes, two.processes) == (1, 2)
    assert two.settings["ddp_backend"] == "gloo"
    # Per rank: half of a step's 8 rows (one packed forward of 4, or 2 micro-batches of 2).
    assert two.settings["gradient_accumulation_steps"] * two.settings["per_device_train_batch_size"] == 4
    assert two.steps == one.steps == 6
    # The same rows: every rank's tokens counted once (plus the label-less 1-token row of an empty share).
    assert 0 <= two.tokens_seen - one.tokens_seen <= 1
    assert two.losses == pytest.approx(one.losses, abs=2e-5)
    first = load_file(Path(one.output_dir) / "adapter_model.safetensors")
    second = load_file(Path(two.output_dir) / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    moved = max(t.abs().max().item() for n, t in first.items() if "lora_B" in n)
    differ = max((first[n] - second[n]).abs().max().item() for n in first)
    assert moved > 1e-3  # lora_B starts at zero: equal adapters mean equal training, not two untrained ones
    assert differ < 1e-3 * moved, (differ, moved)


@pytest.mark.slow  # over 30 s: `make test-slow` (CI runs it after `make test`)
def test_only_rank_zero_writes(pair: tuple[TrainResult, TrainResult]) -> None:
    _, two = pair
    work = Path(two.output_dir).parent
    # precision.json: the precision rank 0 resolved, kept for a resume (smoltune.train.precision)
    expected = ["adapter", "checkpoints", "precision.json", "result.json", "spec.json"]
    assert sorted(p.name for p in work.iterdir()) == expected
    assert [p.name for p in Path(two.output_dir).iterdir() if p.name.startswith("rank")] == []


@pytest.mark.slow  # over 30 s: `make test-slow` (CI runs it after `make test`)
def test_resume_after_sigkill_with_two_processes(
    tiny_model_dir: Path, prepared: dict, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    one, _ = train_pair("packed", tiny_model_dir, prepared, tmp_path_factory)
    spec = spec_for(
        tiny_model_dir,
        prepared,
        tmp_path / "interrupted",
        max_steps=6,
        save_steps=2,
        save_total_limit=5,
        num_processes=2,
    )
    kill_after_step(spec, 3)
    last = latest_complete_checkpoint(tmp_path / "interrupted" / "checkpoints")
    assert last is not None and sorted(p.name for p in last.glob("rng_state*")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]
    resumed = train_in_subprocess(spec)
    assert resumed.resumed_from_step >= 2 and resumed.processes == 2
    assert resumed.losses == pytest.approx(one.losses, abs=2e-5)


def test_launch_command_and_threads(tmp_path: Path) -> None:
    single = launch_command("spec.json", TrainConfig())
    assert single[1:] == ["-m", "smoltune.train.worker", "spec.json"]
    local = launch_command("spec.json", TrainConfig(num_processes=4, grad_accum=4))
    assert local[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in local
    assert "--nproc-per-node=4" in local and local[-3:] == ["-m", "smoltune.train.worker", "spec.json"]
    hosts = TrainConfig(num_processes=2, nnodes=3, grad_accum=6, rdzv_endpoint="10.0.0.5:29400")
    several = launch_command("spec.json", hosts)
    assert "--standalone" not in several
    assert {"--nnodes=3", "--node-rank=0", "--master-addr=10.0.0.5", "--master-port=29400"} <= set(several)
    joins = join_commands("spec.json", hosts)  # the flow's machine is node 0: rank 0 writes where it waits
    assert len(joins) == 2 and "--node-rank=1" in joins[0] and "--node-rank=2" in joins[1]
    assert all(j.startswith("python -m torch.distributed.run") and j.endswith("spec.json") for j in joins)
    assert join_commands("spec.json", TrainConfig(num_processes=2, grad_accum=4)) == []
    # cores shared out; a value the user set wins; one process is left alone
    assert launch_env(TrainConfig(num_processes=2, grad_accum=4), {}, cores=16)["OMP_NUM_THREADS"] == "8"
    assert launch_env(TrainConfig(num_processes=4, grad_accum=4), {}, cores=2)["OMP_NUM_THREADS"] == "1"
    assert launch_env(TrainConfig(num_processes=2, grad_accum=4), {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in launch_env(TrainConfig(), {}, cores=2)
    inherited = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "h", "PATH": "/bin"}
    assert launch_env(TrainConfig(), inherited) == {"PATH": "/bin"}  # a lone worker waits for no peers
    assert Rank.from_env({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == Rank(1, 1, 2)
    assert Rank.from_env({}).is_main


def test_settings_a_data_parallel_run_cannot_honour_are_refused_up_front() -> None:
    config = PipelineConfig(train={"num_processes": 3, "grad_accum": 4, "backend": "unsloth", "nnodes": 2})
    problems = "\n".join(semantic_problems(config))
    assert "train.grad_accum (4) must be a multiple of train.num_processes x train.nnodes (6)" in problems
    assert "backend=unsloth" in problems
    assert "rdzv_endpoint" in problems
    assert not [p for p in semantic_problems(PipelineConfig(train={"num_processes": 2})) if "train." in p]


def test_a_crashing_rank_is_what_the_error_shows(tiny_model_dir: Path, prepared: dict, tmp_path: Path) -> None:
    from smoltune.errors import TrainingError

    spec = spec_for(tiny_model_dir, prepared, tmp_path / "broken", max_steps=2, num_processes=2)
    spec.train_file = str(tmp_path / "missing.jsonl")  # every rank fails reading it
    with pytest.raises(TrainingError) as failed:
        train_in_subprocess(spec)
    assert "missing.jsonl" in str(failed.value) and "[rank" in str(failed.value)


def test_two_machines_meet_at_the_endpoint(tiny_model_dir: Path, prepared: dict, tmp_path_factory) -> None:
    """nnodes=2 on one machine: the runner starts node 0, the logged join command (run here) node 1."""
    import shlex
    import sys

    one, _ = train_pair("packed", tiny_model_dir, prepared, tmp_path_factory)
    port = free_port()
    work = tmp_path_factory.mktemp("two-machines")
    spec = spec_for(tiny_model_dir, prepared, work, max_steps=6, nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}")
    [join] = join_commands(work / "spec.json", TrainConfig.model_validate(spec.config))
    other = subprocess.Popen(
        [sys.executable, *shlex.split(join)[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=launch_env(TrainConfig.model_validate(spec.config)),
    )
    try:
        result = train_in_subprocess(spec)  # writes spec.json where the join command reads it, then waits
    finally:
        assert other.wait(timeout=120) == 0
    assert result.processes == 2
    assert result.losses == pytest.approx(one.losses, abs=2e-5)
