"""The dataset interface: in-memory tensors per split plus a small spec the rest of trainlab reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Task = Literal["classification", "regression", "ranking"]
TASKS: tuple[Task, ...] = ("classification", "regression", "ranking")


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


@dataclass
class Dataset:
    spec: DatasetSpec
    train: Split
    val: Split
    test: Split

    def to(self, device: torch.device) -> Dataset:
        return Dataset(self.spec, self.train.to(device), self.val.to(device), self.test.to(device))
