"""Mini-batches drawn from tensors already on the training device: no workers, no per-sample work."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from trainlab.data.base import Prepare, Split


class InMemoryLoader:
    """Yields ``(inputs, targets)`` batches from one split, reshuffled every epoch.

    A batch size at least the split size means full batch: the whole split, unshuffled, once.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        prepare: Prepare | None = None,
    ) -> None:
        self.split = split
        self.prepare = prepare
        self.batch_size = min(batch_size, len(split))
        self.shuffle = shuffle and self.batch_size < len(split)
        self.generator = torch.Generator(device=split.inputs.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        inputs, targets = self.split.inputs, self.split.targets
        if self.shuffle:
            order = torch.randperm(len(self.split), generator=self.generator, device=inputs.device)
            batches = ((inputs[i], targets[i]) for i in order.split(self.batch_size))
        else:
            batches = zip(
                inputs.split(self.batch_size), targets.split(self.batch_size), strict=True
            )
        for batch_inputs, batch_targets in batches:
            if self.prepare is not None:  # training batches: augmented with the loader's generator
                batch_inputs = self.prepare(batch_inputs, self.generator)
            yield batch_inputs, batch_targets
