"""Image datasets (mnist, fashion_mnist, cifar10): read once with torchvision's dataset classes,
then cached as uint8 tensors so later runs and every sweep member skip decoding.

Files are looked for under ``<root>/<torchvision folder>`` (gzipped IDX files are fine), then in a
system-wide copy (Debian's dataset-fashion-mnist). Missing files are downloaded into a temporary
folder and moved into place only when complete, so a failed download leaves nothing behind.
"""

from __future__ import annotations

import functools
import gzip
import logging
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainlab.data.cache import files_key, read_cache, write_cache
from trainlab.errors import UserError

log = logging.getLogger("trainlab")
CACHE_FORMAT = 4  # 4: the shared entry format of trainlab.data.cache

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


class DataError(UserError):
    """Dataset files are missing, unreadable or cannot be fetched."""


@functools.cache
def _cifar10_reader() -> type:
    import torchvision

    class CIFAR10Files(torchvision.datasets.CIFAR10):
        """torchvision's CIFAR-10 reader without its MD5 checks, so any copy in the real format
        loads (a corrupt batch still fails, at unpickling)."""

        def _check_integrity(self) -> bool:
            folder = Path(self.root, self.base_folder)
            return all((folder / name).is_file() for name in CIFAR_FILES)

        def _load_meta(self) -> None:
            with open(Path(self.root, self.base_folder, self.meta["filename"]), "rb") as file:
                self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: index for index, name in enumerate(self.classes)}

    return CIFAR10Files


@dataclass(frozen=True)
class ImageSource:
    """One image dataset: where torchvision keeps its files and what they hold."""

    name: str
    reader: str  # the torchvision dataset class (imported only when images are read)
    folder: str  # below the data root
    files: tuple[str, ...]
    shape: tuple[int, int, int]  # channels, height, width
    classes: int
    train_count: int
    test_count: int
    system_copies: tuple[str, ...] = ()  # where a system package puts the files
    system_package: str = ""  # that package (Debian's name)

    def reader_class(self) -> type:
        """The torchvision class that reads the files; torchvision costs a second to import,
        so runs on other data never pay it."""
        if self.reader == "CIFAR10":
            return _cifar10_reader()
        import torchvision

        return getattr(torchvision.datasets, self.reader)


SOURCES = {
    "mnist": ImageSource(
        "mnist", "MNIST", "MNIST/raw", IDX_FILES, (1, 28, 28), 10, 60000, 10000
    ),
    "fashion_mnist": ImageSource(
        "fashion_mnist", "FashionMNIST", "FashionMNIST/raw", IDX_FILES,
        (1, 28, 28), 10, 60000, 10000, system_copies=("/usr/share/datasets/fashion-mnist",),
        system_package="dataset-fashion-mnist",
    ),
    "cifar10": ImageSource(
        "cifar10", "CIFAR10", "cifar-10-batches-py", CIFAR_FILES, (3, 32, 32), 10, 50000, 10000
    ),
}  # fmt: skip


def _has_all(folder: Path, files: tuple[str, ...]) -> bool:
    """Every file is there, as itself or gzipped."""
    return all((folder / name).is_file() or (folder / f"{name}.gz").is_file() for name in files)


def _find_files(source: ImageSource, root: Path) -> Path | None:
    for folder in (root / source.folder, *map(Path, source.system_copies)):
        if _has_all(folder, source.files):
            return folder
    return None


def _stage(source: ImageSource, found: Path, staging_root: Path) -> None:
    """Lay the found files out where the torchvision class reads them, decompressing .gz."""
    target = staging_root / source.folder
    target.mkdir(parents=True)
    for name in source.files:
        if (found / name).is_file():
            (target / name).symlink_to((found / name).resolve())
        else:
            with gzip.open(found / f"{name}.gz") as packed, open(target / name, "wb") as plain:
                shutil.copyfileobj(packed, plain)


def _as_tensors(reader_output: Any, source: ImageSource) -> tuple[torch.Tensor, torch.Tensor]:
    data, targets = reader_output.data, reader_output.targets
    images = torch.as_tensor(data)
    # MNIST family: (N, H, W) tensors; CIFAR: (N, H, W, C) numpy arrays.
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous().to(torch.uint8), torch.as_tensor(targets, dtype=torch.int64)


def _decode(source: ImageSource, found: Path) -> dict[str, torch.Tensor]:
    """Read both splits with the torchvision class (files staged in a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="trainlab-stage-") as staging:
        try:
            _stage(source, found, Path(staging))  # a truncated .gz fails here
            train = source.reader_class()(staging, train=True, download=False)
            test = source.reader_class()(staging, train=False, download=False)
        except Exception as error:  # torchvision raises plain RuntimeError/ValueError/pickle errors
            raise DataError(
                f"dataset={source.name}: the files in {found} could not be read ({error}); "
                "replace them with a good copy"
            ) from None
        train_images, train_labels = _as_tensors(train, source)
        test_images, test_labels = _as_tensors(test, source)
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


def _download(source: ImageSource, root: Path) -> Path:
    """Fetch the files with torchvision into a temporary folder; move them in when complete."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".trainlab-download-", dir=root) as temporary:
        try:
            source.reader_class()(temporary, train=True, download=True)
        except Exception as error:
            # torchvision reports one block per mirror: keep what failed and the last reason.
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = (
                " ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else type(error).__name__
            )
            raise DataError(
                f"dataset={source.name}: download failed ({reason}); {_how_to_get(source, root)}"
            ) from None
        destination = root / source.folder
        destination.parent.mkdir(parents=True, exist_ok=True)
        downloaded = Path(temporary) / source.folder
        destination.mkdir(parents=True, exist_ok=True)
        for name in source.files:
            if not (destination / name).exists():
                shutil.move(downloaded / name, destination / name)
    return destination


def _how_to_get(source: ImageSource, root: Path) -> str:
    package = (
        f", or install Debian's copy, which trainlab finds in {source.system_copies[0]}: "
        f"apt-get install {source.system_package}"
        if source.system_package
        else ""
    )
    return (
        f"put {', '.join(source.files)} (or their .gz) in {root / source.folder}, or download them "
        "on a connected machine (dataset.download=true), or point dataset.root (or $TRAINLAB_DATA) "
        f"at a copy{package}"
    )


def _cache_path(source: ImageSource, root: Path) -> Path:
    return root / "trainlab-cache" / f"{source.name}-uint8-v{CACHE_FORMAT}.pt"


def _fingerprint(source: ImageSource, found: Path) -> str:
    """Which files a cache was decoded from: their paths, sizes and modification times."""
    paths = [found / n if (found / n).is_file() else found / f"{n}.gz" for n in source.files]
    return files_key(paths, {"source": source.name})


def read_images(name: str, root: str | Path, download: bool) -> dict[str, torch.Tensor]:
    """Train and test images (uint8, N x C x H x W) and labels of dataset ``name``.

    The cache is used when it was decoded from the files found now (or when no files are left);
    changed or replaced files are decoded again.
    """
    source = SOURCES[name]
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(
            f"dataset.root={root} is a file, not a folder; point dataset.root at the folder "
            "that holds the data (or will)"
        )
    cache = _cache_path(source, root)
    found = _find_files(source, root)
    tensors = read_cache(cache, None if found is None else _fingerprint(source, found))
    if tensors is not None:
        return tensors
    if found is None:
        if not download:
            raise DataError(
                f"dataset={name}: files missing in {root / source.folder}; {_how_to_get(source, root)}"
            )
        log.info("downloading %s into %s", name, root)
        try:
            found = _download(source, root)
        except OSError as error:
            raise DataError(
                f"dataset={name}: cannot write to {root} ({error.strerror}); point dataset.root "
                "(or $TRAINLAB_DATA) at a writable folder"
            ) from None
    log.info("decoding %s from %s (once; cached in %s)", name, found, cache)
    tensors = _decode(source, found)
    write_cache(cache, _fingerprint(source, found), tensors)
    return tensors
