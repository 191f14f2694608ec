"""Data-parallel runs on PyTorch's own engine: torchrun starts the processes, this joins them.

Every process trains the same model on its slice of each global batch under
DistributedDataParallel; process 0 alone writes the run's files. Sums that are read back
(losses, metrics) are added across processes, so the numbers equal a one-process run's.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainlab.errors import UserError


@dataclass(frozen=True)
class Processes:
    """This process's place among the ones torchrun (or SLURM) started."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this node

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def from_environment(environ: dict[str, str] | None = None) -> Processes:
    """Read torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (a single process
    without them)."""
    environ = dict(os.environ if environ is None else environ)
    if "WORLD_SIZE" not in environ:
        return Processes()
    world = int(environ["WORLD_SIZE"])
    return Processes(
        int(environ.get("RANK", 0)),
        world,
        int(environ.get("LOCAL_RANK", 0)),
        int(environ.get("LOCAL_WORLD_SIZE", world)),
    )


def export_submitit_tasks() -> None:
    """In a submitit job of several tasks (hydra/launcher=slurm with several GPUs: one task
    per GPU, on one node or several), set the RANK, WORLD_SIZE and rendezvous address torchrun
    would set, from the job's task numbering, so the tasks become one run's processes.
    Elsewhere (torchrun, one task, no submitit): nothing."""
    if "SUBMITIT_EXECUTOR" not in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # sbatch copies the submitting shell's variables into the job: a MASTER_PORT from there
        # would give every member of an array the same port. submitit derives one per job.
        os.environ.pop("MASTER_PORT", None)
        # CUDA_VISIBLE_DEVICES stays as SLURM set it; local_gpu() finds each task's GPU in it.
        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True
        )


def local_gpu(processes: Processes) -> int:
    """This process's GPU among the ones it sees: its only one when the scheduler binds one GPU
    to each task, else the one of its local rank when it sees one per process on its node."""
    count = torch.cuda.device_count()
    if count <= 1:
        return 0
    if count >= processes.local_world:
        return processes.local_rank
    raise UserError(
        f"process {processes.rank} sees {count} GPUs for the {processes.local_world} processes "
        "on its node, so some would share one; let every task see all of the node's GPUs, or "
        "give each task one of its own (check the cluster's --gpu-bind)"
    )


def join(processes: Processes) -> None:
    """Join the process group: nccl when every process has a GPU, gloo otherwise."""
    if processes.parallel and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_gpu(processes))
        dist.init_process_group(backend)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
        _host_group.cache_clear()


@contextlib.contextmanager
def process_group(processes: Processes) -> Iterator[None]:
    """The process group for a block: joined and left here unless torchrun's entry point
    already joined it (it must, to agree on the run folder before Hydra starts)."""
    if not processes.parallel or dist.is_initialized():
        yield
        return
    join(processes)
    try:
        yield
    finally:
        leave()


def broadcast(value: Any, processes: Processes) -> Any:
    """Process 0's ``value``, on every process."""
    if not processes.parallel:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (itself in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


@functools.cache
def _host_group() -> Any:
    """A gloo group for small host-side agreements: on nccl they would wait for the GPU."""
    return dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None


def any_process(flag: bool) -> bool:
    """True on every process when it is true on any (a stop request, say). Polled after every
    step, so it stays on the host: no GPU synchronization."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_host_group())
    return bool(value.item())


def wait_for_all() -> None:
    """Return when every process has got here (on the host: no GPU work to wait for)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier(group=_host_group())


def gather(value: Any, processes: Processes) -> list[Any]:
    """Every process's ``value``, in rank order, on every process."""
    if not processes.parallel:
        return [value]
    # Tensors travel serialized: all_gather_object cannot pickle some (the RNG's byte tensors).
    buffer = io.BytesIO()
    torch.save(value, buffer)
    values: list[Any] = [None] * processes.world
    dist.all_gather_object(values, buffer.getvalue())
    return [torch.load(io.BytesIO(data), weights_only=True) for data in values]
