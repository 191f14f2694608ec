"""The dataset interface: in-memory tensors per split plus a small spec the rest of trainlab reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Task = Literal["classification", "regression", "ranking"]
TASKS: tuple[Task, ...] = ("classification", "regression", "ranking")
# Ranking lists of different lengths are padded to the longest; a padded item carries this grade
# (real grades are >= 0) and every ranking loss and metric leaves it out.
PAD_GRADE = -1.0


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset provides, known before any data is loaded.

    ``input_shape`` is the shape of one example (one item for ranking); ``output_size`` is how many
    numbers the model emits per example (per item for ranking: one score).
    """

    name: str
    task: Task
    input_shape: tuple[int, ...]
    output_size: int
    train_size: int
    val_size: int
    test_size: int
    num_classes: int | None = None
    list_size: int | None = None
    ndcg_k: int | None = None


@dataclass
class Split:
    """One split held as whole tensors: examples along the first dimension."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device) -> Split:
        return Split(self.inputs.to(device), self.targets.to(device))


# Per batch on the device: augments when given a generator (training), else passes inputs on.
Prepare = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


@dataclass
class Dataset:
    """The three splits, plus ``prepare`` for image data: its ``normalize`` turns a stored uint8
    split into float inputs once, on the device (see :meth:`to`), and calling it augments a
    training batch."""

    spec: DatasetSpec
    train: Split
    val: Split
    test: Split
    prepare: Prepare | None = None

    def to(self, device: torch.device) -> Dataset:
        """The dataset on ``device``, image splits normalized there in one batched pass."""
        prepare = self.prepare.to(device) if hasattr(self.prepare, "to") else self.prepare
        normalize = getattr(prepare, "normalize", None)

        def move(split: Split) -> Split:
            inputs = split.inputs.to(device)
            return Split(normalize(inputs) if normalize else inputs, split.targets.to(device))

        return Dataset(self.spec, move(self.train), move(self.val), move(self.test), prepare)
