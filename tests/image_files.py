"""Write small image datasets in their real on-disk formats: MNIST-style IDX files (plain or
gzipped) and CIFAR-10 python-pickle batches. Pixel values encode (split, index) so tests can
tell exactly which image ended up where."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def idx_images(count: int, offset: int) -> np.ndarray:
    """``count`` 28x28 images; image i is filled with (offset + i) % 256 except a marker pixel."""
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    for i in range(count):
        images[i] = (offset + i) % 256
        images[i, 0, :3] = (i % 7, 200, 0)  # an asymmetric corner, so flips show
    return images


def idx_labels(count: int, offset: int) -> np.ndarray:
    return ((np.arange(count) + offset) % 10).astype(np.uint8)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_dataset(folder: Path, train: int, test: int, gzipped: bool) -> None:
    """The four MNIST files with ``train`` and ``test`` examples in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": idx_images(train, 0),
        "train-labels-idx1-ubyte": idx_labels(train, 0),
        "t10k-images-idx3-ubyte": idx_images(test, 100),
        "t10k-labels-idx1-ubyte": idx_labels(test, 100),
    }
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gzipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def cifar_images(count: int, offset: int) -> np.ndarray:
    """(count, 3072) rows in CIFAR's layout: 1024 red, 1024 green, 1024 blue values."""
    rows = np.zeros((count, 3, 32, 32), dtype=np.uint8)
    for i in range(count):
        rows[i, 0] = (offset + i) % 256
        rows[i, 1] = 10
        rows[i, 2] = 250
    return rows.reshape(count, 3072)


def write_cifar_dataset(root: Path, per_batch: int, test: int) -> None:
    """cifar-10-batches-py with five training batches of ``per_batch`` images and a test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for batch in range(1, 6):
        offset = (batch - 1) * per_batch
        entry = {
            "data": cifar_images(per_batch, offset),
            "labels": [(offset + i) % 10 for i in range(per_batch)],
            "batch_label": f"training batch {batch} of 5",
        }
        (folder / f"data_batch_{batch}").write_bytes(pickle.dumps(entry))
    entry = {"data": cifar_images(test, 100), "labels": [(100 + i) % 10 for i in range(test)]}
    (folder / "test_batch").write_bytes(pickle.dumps(entry))
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
