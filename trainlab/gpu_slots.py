"""Sweeps that fill the GPUs: each member holds one slot on one GPU while it runs.

A slot is a lock file (``gpu<i>.slot<k>.lock`` in the sweep folder), held with ``flock`` for
the member's lifetime, so members started by any launcher, in any process, share the GPUs
without a coordinator: the first free slot wins, slots spread over GPUs before doubling up,
and a member that finds none waits for one. The kernel releases a lock when its process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SLOTS_FOLDER = ".gpu-slots"
GPU_LAUNCHER = "gpus"  # conf/hydra/launcher/gpus.yaml
log = logging.getLogger("trainlab")


def slot_order(gpus: int, members_per_gpu: int) -> list[tuple[int, int]]:
    """(gpu, slot) pairs, every GPU's first slot before any GPU's second."""
    return [(gpu, slot) for slot in range(members_per_gpu) for gpu in range(gpus)]


@contextlib.contextmanager
def claim_gpu(
    folder: Path, gpus: int, members_per_gpu: int, poll_seconds: float = 1.0
) -> Iterator[int]:
    """Hold the first free slot until the block ends; yield its GPU's index."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu, slot in slot_order(gpus, members_per_gpu):
            descriptor = os.open(folder / f"gpu{gpu}.slot{slot}.lock", os.O_CREAT | os.O_RDWR)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                continue
            try:
                yield gpu
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
                os.close(descriptor)
            return
        time.sleep(poll_seconds)  # every slot is taken: wait for a member to finish


@contextlib.contextmanager
def gpu_for_member(config: Any, hydra_config: Any) -> Iterator[None]:
    """Under hydra/launcher=gpus, a member holds a slot on one GPU while it runs (device=auto).

    Other launchers place members themselves (SLURM gives each job its GPUs), and their
    members may share a sweep folder across nodes, where the slot files would not mean one GPU.
    """
    import torch

    chosen = hydra_config.runtime.choices.get("hydra/launcher") == GPU_LAUNCHER
    count = torch.cuda.device_count() if chosen and config.get("device") == "auto" else 0
    if count == 0:
        yield
        return
    slots = Path(hydra_config.sweep.dir) / SLOTS_FOLDER
    with claim_gpu(slots, count, config.members_per_gpu) as gpu:
        torch.cuda.set_device(gpu)  # device=auto now means this GPU; the config is unchanged
        log.info("running on GPU %d", gpu)
        yield
