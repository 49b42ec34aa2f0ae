"""Data-parallel training: how the training process is launched (one process, or torchrun's N), and, inside
a launched process, which rank it is and how the ranks agree.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m smoltune.train.worker SPEC.json

torchrun (torch's own launcher, as Axolotl and LLaMA-Factory use it) starts the processes, sets RANK /
LOCAL_RANK / WORLD_SIZE and restarts nothing; the Trainer (through accelerate) wraps the model in
DistributedDataParallel, shards each step's batches over the ranks and averages gradients. What is written
here is only what torchrun and the Trainer leave to the program: the command, the threads each process may
use on a CPU, the process group (created early so that a choice measured on the machine is made once, by
rank 0, and shared), and which rank writes files.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from smoltune.config import TrainConfig

T = TypeVar("T")
# What torchrun sets for each process it starts (Rank.from_env reads the first three).
WORKER_MODULE = "smoltune.train.worker"  # the training process's entry point (python -m)
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch_command(spec_file: str | Path, train: TrainConfig, node_rank: int = 0) -> list[str]:
    """The command that runs the training worker: plain Python for one process, else torchrun with
    `train.num_processes` per machine. Several machines meet at `train.rdzv_endpoint` with fixed node ranks
    (torchrun's static rendezvous): the flow's machine is node 0, so global rank 0, which writes the result
    the flow waits for, runs there; the others join with node_rank 1..nnodes-1 (`join_commands`)."""
    from smoltune.train.prestart import worker_command

    if train.world_size == 1:
        return worker_command(WORKER_MODULE, spec_file)
    worker = ["-m", WORKER_MODULE, str(spec_file)]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={train.num_processes}",
        f"--nnodes={train.nnodes}",
        "--max-restarts=0",  # a crashed rank fails the run; the rerun resumes from the last complete checkpoint
    ]
    if train.nnodes == 1:
        return [*launcher, "--standalone", *worker]
    host, port = str(train.rdzv_endpoint).rsplit(":", 1)
    return [*launcher, f"--node-rank={node_rank}", f"--master-addr={host}", f"--master-port={port}", *worker]


def join_commands(spec_file: str | Path, train: TrainConfig) -> list[str]:
    """What to run on each other machine of a multi-machine training (same paths on shared storage)."""
    import shlex

    return [shlex.join(["python", *launch_command(spec_file, train, n)[1:]]) for n in range(1, train.nnodes)]


def launch_env(train: TrainConfig, base: dict[str, str] | None = None, cores: int | None = None) -> dict[str, str]:
    """The worker's environment. With N processes on a CPU each gets cores / N OpenMP threads (torchrun would
    give each one thread, wasting a bigger machine; two processes both using every core thrash); a value the
    user set is kept. torchrun sets the rank variables itself; the parent's own (e.g. when the flow itself
    runs inside a distributed job) are dropped for a single-process training."""
    env = dict(os.environ if base is None else base)
    if train.world_size == 1:  # a lone worker must not take an inherited WORLD_SIZE for peers to wait for
        for name in TORCHRUN_VARIABLES:
            env.pop(name, None)
    if train.num_processes > 1 and "OMP_NUM_THREADS" not in env:
        cores = cores or len(os.sched_getaffinity(0))
        env["OMP_NUM_THREADS"] = str(max(1, cores // train.num_processes))
    return env


@dataclass(frozen=True)
class Rank:
    """This process's place in a data-parallel training (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the adapter, the result and the progress lines; every rank writes its RNG state."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Rank:
        env = dict(os.environ if env is None else env)
        return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def join(device: str) -> Rank:
    """This process's rank; under torchrun also the process group (NCCL on GPUs, gloo on CPUs, the backends
    accelerate picks, which then reuses the group) and, on a GPU, the rank's own card."""
    rank = Rank.from_env()
    if rank.world == 1:
        return rank
    import torch
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.set_device(rank.local_rank)
    else:
        _load_cpu_indexed_locations()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return rank


def _load_cpu_indexed_locations() -> None:
    """On a CPU under torchrun the Trainer resumes the optimizer with `torch.load(map_location=args.device)`,
    and that device is `cpu:0`, which torch.load cannot place ("don't know how to restore data location ...
    tagged with cpu:0"): a resume after a crash would fail. Tensors bound for `cpu:N` stay where torch.load
    put them, in CPU memory (torch's documented hook for extra storage locations)."""
    import torch

    def restore(storage: Any, location: str) -> Any:
        return storage if location.startswith("cpu:") else None

    torch.serialization.register_package(30, lambda storage: None, restore)


def from_rank_zero(value: T, rank: Rank) -> T:
    """Rank 0's `value` on every rank: a choice measured on the machine (e.g. the precision, from timed
    matmuls) must be the same in all processes, or their gradients would not be of the same model."""
    if rank.world == 1:
        return value
    import torch.distributed as dist

    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(rank: Rank) -> None:
    """Wait until every rank reaches this point (e.g. has written its part of a checkpoint)."""
    if rank.world > 1:
        import torch.distributed as dist

        dist.barrier()


def agreed_stop(signum: int | None) -> int | None:
    """The stop signal every rank acts on at this step end: the highest any rank has received (None for none).
    A signal reaches each rank at its own moment (torchrun relays it to every process, a pod stop may reach one),
    and a rank that stopped alone would leave the others waiting in the next step's gradient all-reduce until
    torchrun kills them, without the checkpoint. So the ranks agree at each step end (one all-reduce of one
    number, on the group's device: NCCL reduces only CUDA tensors) and all stop, and save, at the same step.
    One process (no group, or a group of one) decides alone, with no collective."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return signum
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(dist.get_backend()) else "cpu"
    highest = torch.tensor([signum or 0], dtype=torch.int64, device=device)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    return int(highest.item()) or None


def leave(rank: Rank) -> None:
    """Tear the process group down at the end (torch warns about a group left open)."""
    if rank.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class RankShare:
    """A collator that keeps this rank's share of a batch drawn for all ranks: rank r of N takes the r-th of N
    near-equal contiguous slices. A rank whose slice is empty (an epoch's last batch with fewer rows than
    ranks) gets one row with no labels: it adds no loss and no labelled token, but still runs the forward
    and backward that DistributedDataParallel's all-reduce waits for."""

    def __init__(self, collate: Any, rank: Rank, ignore_index: int) -> None:
        self.collate, self.rank, self.ignore_index = collate, rank, ignore_index

    def __call__(self, rows: list[dict]) -> Any:
        share = -(-len(rows) // self.rank.world)  # ceil: the first ranks take one more on an uneven batch
        mine = rows[self.rank.rank * share : (self.rank.rank + 1) * share]
        if not mine:
            first = rows[0]
            mine = [{**first, "input_ids": first["input_ids"][:1], "labels": [self.ignore_index]}]
        return self.collate(mine)


def all_ranks_loader(dataset: Any, collate: Any, batch_size: int, data_seed: int, rank: Rank, ignore: int) -> Any:
    """The training batches of a data-parallel run, in exactly one process's order.

    Why not accelerate's sharding: it hands rank r every N-th batch and pads an epoch's short last batch with
    rows from the epoch's start (or, with split_batches, fills it to full size), so the last step of every
    epoch would see rows one process never sees there, and the loss curves part. Here every rank draws the
    same global batches, `batch_size` = N micro-batches' rows, from the sampler accelerate gives one process
    (SeedableRandomSampler, seeded by data_seed + epoch), and keeps its own slice (RankShare)."""
    import torch
    from accelerate.data_loader import SeedableRandomSampler
    from torch.utils.data import BatchSampler, DataLoader

    sampler = SeedableRandomSampler(data_source=range(len(dataset)), generator=torch.Generator(), data_seed=data_seed)

    class Loader(DataLoader):
        def set_epoch(self, epoch: int) -> None:  # the Trainer calls it at each epoch, a resumed one included
            sampler.set_epoch(epoch)

    return Loader(
        dataset,
        batch_sampler=BatchSampler(sampler, batch_size, drop_last=False),
        collate_fn=RankShare(collate, rank, ignore),
        num_workers=0,
    )
