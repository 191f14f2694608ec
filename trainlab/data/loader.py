"""Mini-batches drawn from tensors already on the training device: no workers, no per-sample work."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from trainlab.data.base import Prepare, Split


class InMemoryLoader:
    """Yields ``(inputs, targets)`` batches from one split, reshuffled every epoch.

    A batch size at least the split size means full batch: the whole split, unshuffled, once.
    The data order is resumable: :meth:`state_dict` taken mid-epoch, loaded into a new loader,
    yields exactly the batches the first one had left (augmented with the same random draws).

    Data-parallel: with ``world`` processes, ``batch_size`` is the global batch. Every process
    draws the same permutation from the shared seed and takes its own slice (``rank``) of each
    global batch, so an epoch still visits every example exactly once across the processes.
    Augmentation then draws from a generator of the process's own.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        prepare: Prepare | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.split = split
        self.prepare = prepare
        self.batch_size = min(batch_size, len(split))
        self.shuffle = shuffle and self.batch_size < len(split)
        self.rank, self.world = rank, world
        self.generator = torch.Generator(device=split.inputs.device)
        self.generator.manual_seed(seed)
        self.augment_generator = self.generator  # one process: one stream, as before
        if world > 1:
            self.augment_generator = torch.Generator(device=split.inputs.device)
            self.augment_generator.manual_seed(seed + 1 + rank)
        self.epoch_start = self.generator.get_state()  # draws the current epoch's order
        self.position = 0  # batches handed out in the current epoch

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "epoch_start": self.epoch_start,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.augment_generator.set_state(state["augment_generator"])
        self.epoch_start = state["epoch_start"]
        self.position = state["position"]

    def _slice(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's part of a global batch (all of it in a single process)."""
        return batch if self.world == 1 else batch.tensor_split(self.world)[self.rank]

    def _order(self) -> torch.Tensor:
        device = self.split.inputs.device
        if self.position == 0:  # a new epoch
            self.epoch_start = self.generator.get_state()
            return torch.randperm(len(self.split), generator=self.generator, device=device)
        # Resuming mid-epoch: draw the same order again from a copy of the epoch's start state;
        # self.generator already stands where the interrupted epoch left it.
        replay = torch.Generator(device=device)
        replay.set_state(self.epoch_start)
        return torch.randperm(len(self.split), generator=replay, device=device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        inputs, targets = self.split.inputs, self.split.targets
        for rows in self.batch_rows():
            batch_inputs, batch_targets = inputs[rows], targets[rows]
            if self.prepare is not None:  # training batches: augmented with the loader's generator
                batch_inputs = self.prepare(batch_inputs, self.augment_generator)
            yield batch_inputs, batch_targets

    def batch_rows(self) -> Iterator[torch.Tensor | slice]:
        """The rows of each batch this process takes in the epoch (from where it stands): a
        tensor of indices when shuffled, a slice when not. Sweep members trained together draw
        their batches' rows here and gather them all at once."""
        start = self.position * self.batch_size
        if start >= len(self.split):  # resumed after the epoch's last batch
            self.position = 0
            return
        if self.shuffle:
            batches = (self._slice(i) for i in self._order()[start:].split(self.batch_size))
        else:
            ends = range(start, len(self.split), self.batch_size)
            batches = (self._rows(first, self.batch_size) for first in ends)
        for rows in batches:
            self.position += 1  # before yielding: a checkpoint taken now counts this batch
            yield rows
        self.position = 0

    def _rows(self, first: int, size: int) -> slice:
        """This process's part of the unshuffled global batch starting at ``first``."""
        stop = min(first + size, len(self.split))
        if self.world == 1:
            return slice(first, stop)
        share, extra = divmod(stop - first, self.world)  # as tensor_split cuts a batch
        begin = first + self.rank * share + min(self.rank, extra)
        return slice(begin, begin + share + (1 if self.rank < extra else 0))
