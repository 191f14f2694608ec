"""mnist, fashion_mnist and cifar10 as trainlab datasets: uint8 splits kept whole on the
device, with normalization and augmentation done per batch by :class:`ImageBatches`.

The validation split is carved from the official training set with ``split_seed``; the official
test set is the test split.
"""

from __future__ import annotations

from typing import Literal

import torch

from trainlab.data.base import Dataset, DatasetSpec, Split
from trainlab.data.images import SOURCES, DataError, read_images
from trainlab.data.transforms import ImageBatches
from trainlab.settings import require


def describe(
    source: str,
    root: str,
    download: bool,
    train_size: int | None,
    val_size: int,
    test_size: int | None,
    split_seed: int,
    normalize: Literal["channel", "image", "none"],
    flip: bool,
    translate: int,
) -> DatasetSpec:
    """Check the settings against the dataset's official sizes; reads no file."""
    image_source = SOURCES[source]
    official_train, official_test = image_source.train_count, image_source.test_count
    require(
        1 <= val_size < official_train,
        f"dataset.val_size must be in [1, {official_train - 1}], got {val_size}",
    )
    available = official_train - val_size
    require(
        train_size is None or 1 <= train_size <= available,
        f"dataset.train_size must be null or in [1, {available}] (the {official_train} training "
        f"images minus dataset.val_size), got {train_size}",
    )
    require(
        test_size is None or 1 <= test_size <= official_test,
        f"dataset.test_size must be null or in [1, {official_test}], got {test_size}",
    )
    require(0 <= split_seed < 2**63, f"dataset.split_seed must be in [0, 2^63), got {split_seed}")
    require(0 <= translate <= 16, f"dataset.translate must be in [0, 16] pixels, got {translate}")
    return DatasetSpec(
        name=source,
        task="classification",
        input_shape=image_source.shape,
        output_size=image_source.classes,
        train_size=train_size or available,
        val_size=val_size,
        test_size=test_size or official_test,
        num_classes=image_source.classes,
    )


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], in float64 for accuracy."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for chunk in images.split(4096):  # bounded memory on the CPU
        values = chunk.to(torch.float64).div_(255).transpose(0, 1).reshape(channels, -1)
        total += values.sum(1)
        squares += values.pow(2).sum(1)
    count = images.numel() / channels
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def load(**settings) -> Dataset:
    """Read (or decode once and cache) the images, carve the splits, set up batch preparation."""
    described = describe(**settings)
    tensors = read_images(settings["source"], settings["root"], settings["download"])
    train_images, train_labels = tensors["train_images"], tensors["train_labels"]
    test_images, test_labels = tensors["test_images"], tensors["test_labels"]
    val_size = settings["val_size"]
    available = len(train_labels) - val_size
    train_size = settings["train_size"] or available
    test_size = settings["test_size"] or len(test_labels)
    if available < 1 or train_size > available or test_size > len(test_labels):
        raise DataError(
            f"dataset={settings['source']} has {len(train_labels)} training and {len(test_labels)} "
            f"test images here, too few for val_size={val_size}, train_size={settings['train_size']}, "
            f"test_size={settings['test_size']}; lower them"
        )
    order = torch.randperm(
        len(train_labels), generator=torch.Generator().manual_seed(settings["split_seed"])
    )
    val_index, train_index = order[:val_size], order[val_size : val_size + train_size]
    train = Split(train_images[train_index], train_labels[train_index])
    mean, std = channel_stats(train.inputs)
    prepare = ImageBatches(
        settings["normalize"], mean, std, settings["flip"], settings["translate"]
    )
    spec = DatasetSpec(**{**described.__dict__, "train_size": train_size, "test_size": test_size})
    return Dataset(
        spec,
        train,
        Split(train_images[val_index], train_labels[val_index]),
        Split(test_images[:test_size], test_labels[:test_size]),
        prepare,
    )
