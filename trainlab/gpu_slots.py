"""Sweeps that fill the GPUs: each member holds one slot on one GPU while it runs.

A slot is a lock file (``gpu<i>.slot<k>.lock`` in the sweep folder), held with ``flock`` for
the member's lifetime, so members started by any launcher, in any process, share the GPUs
without a coordinator: the first free slot wins, slots spread over GPUs before doubling up,
and a member that finds none waits for one. The kernel releases a lock when its process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

SLOTS_FOLDER = ".gpu-slots"


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
