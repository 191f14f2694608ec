"""Datasets by name: each source validates its settings cheaply and loads on demand."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainlab.data import image_folder, synthetic, table, vision
from trainlab.data.base import TASKS, Dataset, DatasetSpec, Split, Task
from trainlab.data.loader import InMemoryLoader
from trainlab.settings import choose

__all__ = [
    "DATASETS",
    "TASKS",
    "Dataset",
    "DatasetSpec",
    "InMemoryLoader",
    "Split",
    "Task",
    "describe_dataset",
    "load_dataset",
]


@dataclass(frozen=True)
class DataSource:
    describe: Callable[..., DatasetSpec]  # validates settings; only a user's files are read
    load: Callable[..., Dataset]
    bound: dict[str, Any] = field(default_factory=dict)  # arguments fixed by the option


def _image_source(name: str) -> DataSource:
    return DataSource(vision.describe, vision.load, {"source": name})


DATASETS: dict[str, DataSource] = {
    "synthetic": DataSource(synthetic.describe, synthetic.load),
    "mnist": _image_source("mnist"),
    "fashion_mnist": _image_source("fashion_mnist"),
    "cifar10": _image_source("cifar10"),
    "table": DataSource(table.describe, table.load),
    "image_folder": DataSource(image_folder.describe, image_folder.load),
}


def _source_and_settings(config: Mapping[str, Any]) -> tuple[DataSource, dict[str, Any]]:
    _, source, settings = choose(
        "dataset", config, DATASETS, lambda source: source.describe,
        supplied=("source",),  # bound by the option (image datasets)
    )  # fmt: skip
    return source, {**source.bound, **settings}


def describe_dataset(config: Mapping[str, Any]) -> DatasetSpec:
    """The spec of the configured dataset, checking its settings; loads nothing."""
    source, settings = _source_and_settings(config)
    return source.describe(**settings)


def load_dataset(config: Mapping[str, Any]) -> Dataset:
    """Load (or generate) the configured dataset on the CPU."""
    source, settings = _source_and_settings(config)
    return source.load(**settings)
