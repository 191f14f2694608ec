"""Data-parallel runs on PyTorch's own engine: torchrun starts the processes, this joins them.

Every process trains the same model on its slice of each global batch under
DistributedDataParallel; process 0 alone writes the run's files. Sums that are read back
(losses, metrics) are added across processes, so the numbers equal a one-process run's.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from trainlab.errors import SharedError, UserError, as_user_error, first_line

T = TypeVar("T")


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


def local_gpu(processes: Processes, environ: Mapping[str, str] | None = None) -> int:
    """This process's GPU among the ones it sees: the one of its local rank when it sees one
    per process on its node, else its only one when the scheduler bound one GPU to each task
    (SLURM's --gpus-per-task or --gpu-bind). torchrun binds none: its processes see the same
    GPUs, so fewer GPUs than processes means sharing."""
    environ = os.environ if environ is None else environ
    count = torch.cuda.device_count()
    if count >= processes.local_world:
        return processes.local_rank
    if count == 1 and "TORCHELASTIC_RUN_ID" not in environ:
        return 0
    raise UserError(
        f"{count} GPU{'' if count == 1 else 's'} for the {processes.local_world} processes on "
        "a node, so some would share one; start one process per GPU, let every task see all of "
        "the node's GPUs, or give each task one of its own (check the cluster's --gpu-bind)"
    )


def join(processes: Processes) -> None:
    """Join the process group: nccl when every process has a GPU, gloo otherwise."""
    if processes.parallel and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)  # nccl connects at the first collective on the GPU
        try:
            _host_group()  # made by all processes together, now, not by the first that needs it
            if backend == "nccl":
                _refuse_shared_gpus(agreed(lambda: _take_gpu(processes), processes), processes)
        except BaseException:
            leave()
            raise


def _take_gpu(processes: Processes) -> tuple[str, str] | None:
    """Make this process's GPU the current one; where it is: (host, GPU UUID), None if the
    UUID is unknown."""
    gpu = local_gpu(processes)
    torch.cuda.set_device(gpu)
    uuid = getattr(torch.cuda.get_device_properties(gpu), "uuid", None)
    return None if uuid is None else (socket.gethostname(), str(uuid))


def _refuse_shared_gpus(here: tuple[str, str] | None, processes: Processes) -> None:
    """Two processes on one GPU would fail inside nccl, or crawl: refuse it in one line. A
    scheduler that binds GPUs renumbers them in each task, so GPUs compare by their UUIDs."""
    places: list[Any] = [None] * processes.world
    dist.all_gather_object(places, here, group=_host_group())
    sharing = sharing_a_gpu(places)
    if sharing:
        text = (
            f"processes {', '.join(map(str, sharing))} were given the same GPU; give each "
            "task a GPU of its own (--gpus-per-task=1, or one task per GPU on each node)"
        )
        raise (UserError if processes.main else SharedError)(text)


def sharing_a_gpu(places: list[tuple[str, str] | None]) -> list[int]:
    """The ranks whose (host, GPU UUID) another rank has too (None: not known, not compared)."""
    known = [place for place in places if place is not None]
    return [rank for rank, place in enumerate(places) if place and known.count(place) > 1]


def leave() -> None:
    if dist.is_initialized():
        gc.collect()  # what still holds the process group (a failed run's model) goes first
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


def agreed(action: Callable[[], T], processes: Processes) -> T:
    """``action()`` on every process, then an agreement on whether it failed.

    A failure on any process (data missing on one node, a checkpoint it cannot read, a bug)
    ends all of them here, so none is left waiting for the others in the next collective.
    Process 0 raises a UserError naming the first failure (with its process number when it
    was another's), which it reports and records; the others raise SharedError. A bug is
    raised as itself where it happened, for its traceback (was_agreed() tells it apart).
    """
    if not processes.parallel:
        return action()
    result: T | None = None
    own: Exception | None = None
    try:
        result = action()
    except Exception as error:  # every process must learn of it; re-raised below
        own = error
    try:
        problem = None if own is None else _one_line(own)
        problems: list[str | None] = [None] * processes.world
        dist.all_gather_object(problems, problem, group=_host_group())
        failed = [(rank, text) for rank, text in enumerate(problems) if text is not None]
        if not failed:
            return result  # type: ignore[return-value]
        if own is not None and as_user_error(own) is None:
            own.trainlab_agreed = True  # type: ignore[attr-defined]
            raise own  # a bug or a resource: its traceback, from where it happened
        rank, text = failed[0]
        if not processes.main:
            raise SharedError(text)
        raise UserError(text if rank == 0 else f"process {rank}: {text}")
    finally:
        # own's traceback holds this frame, which holds own: a cycle that would keep what the
        # action used (the model under DDP, so the process group) alive until the interpreter
        # exits, where gloo aborts ("terminate called without an active exception").
        own = None


def was_agreed(error: BaseException) -> bool:
    """Whether ``error`` came through agreed(): every process of the run knows of it."""
    return getattr(error, "trainlab_agreed", False)


def _one_line(error: Exception) -> str:
    mistake = as_user_error(error)
    if mistake is not None:
        return str(mistake)
    first = first_line(error)
    what = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return f"crashed ({what}); its traceback is in its own output"


class Team:
    """This process among the others of its run: the phases they must pass together
    (:meth:`agree`) and what process 0 alone does (:meth:`on_main`, :meth:`share`). In a
    single process each is just the call."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes

    @property
    def main(self) -> bool:
        return self.processes.main

    @property
    def parallel(self) -> bool:
        return self.processes.parallel

    def agree(self, action: Callable[[], T]) -> T:
        """``action()`` on every process; a failure on any ends it on all (see :func:`agreed`)."""
        return agreed(action, self.processes)

    def on_main(self, action: Callable[[], T]) -> T | None:
        """``action()`` on process 0 only (None elsewhere); a failure there ends all of them."""
        return agreed(lambda: action() if self.main else None, self.processes)

    def share(self, action: Callable[[], T]) -> T:
        """``action()`` on process 0 only, and its result on every process."""
        return broadcast(self.on_main(action), self.processes)

    def gather(self, value: Any) -> list[Any]:
        return gather(value, self.processes)

    def from_main(self, value: T) -> T:
        """Process 0's ``value``, on every process."""
        return broadcast(value, self.processes)

    def mean(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """How numbers read back are averaged over the processes (None: one process)."""
        world = self.processes.world
        return (lambda tensor: reduce_sum(tensor) / world) if self.parallel else None

    def any(self, flag: Callable[[], bool]) -> Callable[[], bool]:
        """``flag`` polled so that every process sees it true once any does."""
        return (lambda: any_process(flag())) if self.parallel else flag

    def data_parallel(
        self, model: torch.nn.Module, device: torch.device, seed: int
    ) -> torch.nn.Module:
        """The model under DistributedDataParallel (same weights everywhere: DDP copies process
        0's), and each process its own dropout stream: the same masks on every slice of a batch
        would be correlated."""
        if not self.parallel:
            return model
        from torch.nn.parallel import DistributedDataParallel

        torch.manual_seed(seed + self.processes.rank)
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


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


def lost_a_peer(error: BaseException) -> bool:
    """Whether a collective failed because another process of the run went away."""
    if isinstance(error, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer")
    )
