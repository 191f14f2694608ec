"""image_folder: a user's folder of images in torchvision's ImageFolder layout, as a trainlab
classification dataset kept whole on the device like cifar10.

Two layouts: ``DIR/train/<class>/`` with ``DIR/val/`` and ``DIR/test/`` beside it (either may be
left out: it is then carved from train, stratified by class), or ``DIR/<class>/`` alone (all
three splits carved). Every image is decoded with Pillow once, resized to ``image_size`` and kept
as uint8 in the shared decoded-data cache; :func:`describe` decodes (or reads the cache) in the
preflight, so a bad image stops a sweep before any run, and it is memoized, so a sweep's members
share one decode per process.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from trainlab.data.base import Dataset, DatasetSpec, Split
from trainlab.data.cache import cache_path, files_key, read_cache, write_cache
from trainlab.data.images import DataError
from trainlab.data.transforms import ImageBatches
from trainlab.data.vision import channel_stats
from trainlab.errors import first_line
from trainlab.settings import require

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("trainlab")
NAME = "image_folder"
EXTENSIONS = frozenset(
    (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
)
SPLITS = ("train", "val", "test")  # split folders; an image's split is its index here
GREY_MODES = frozenset(("1", "L", "LA", "La", "F"))  # plus I, I;16...: 16-bit grey
CACHE_FORMAT = 1  # part of the cache key: raise it when the decoding changes
MAX_SIDE = 4096
HOW = "set dataset.path=<folder> (a folder of class folders, or train/ and test/ folders of them)"


@dataclass(frozen=True)
class Folder:
    """What a scan of dataset.path found: the classes (the sorted class folders of the training
    folder) and every image with its label and its split folder (all train when there is none)."""

    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    folders: tuple[int, ...]  # index into SPLITS
    present: tuple[bool, bool, bool]  # whether train/, val/, test/ are folders of their own


@dataclass(frozen=True)
class Contents:
    """The decoded images (uint8 N x C x H x W, every split), their labels and splits."""

    images: torch.Tensor
    labels: torch.Tensor
    splits: torch.Tensor  # index into SPLITS


def describe(
    path: str | None,
    root: str,
    image_size: int | tuple[int, int],
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    normalize: Literal["channel", "image", "none"],
    flip: bool,
    translate: int,
) -> DatasetSpec:
    """Check the settings, then the folder (layout, classes, every image), so that whatever a
    user can get wrong stops the preflight; decodes once per process (or reads the cache)."""
    return _described(path, root, image_size, val_fraction, test_fraction, split_seed, translate)[0]


def load(**settings) -> Dataset:
    """The splits as uint8 tensors, normalized and augmented per batch on the device."""
    spec, contents = _described(
        settings["path"], settings["root"], settings["image_size"], settings["val_fraction"],
        settings["test_fraction"], settings["split_seed"], settings["translate"],
    )  # fmt: skip
    train, val, test = (
        Split(contents.images[mask], contents.labels[mask])
        for mask in (contents.splits == index for index in range(len(SPLITS)))
    )
    mean, std = channel_stats(train.inputs)
    prepare = ImageBatches(
        settings["normalize"], mean, std, settings["flip"], settings["translate"]
    )
    return Dataset(spec, train, val, test, prepare)


def _described(
    path: str | None,
    root: str,
    image_size: int | tuple[int, int],
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    translate: int,
) -> tuple[DatasetSpec, Contents]:
    """The spec and the contents; every check comes before any decoding or cache write."""
    size = _check_settings(path, image_size, val_fraction, test_fraction, split_seed, translate)
    assert path is not None  # (checked above)
    folder = _scan(path)
    splits = _assign_splits(folder, val_fraction, test_fraction, split_seed)
    counts = np.bincount(splits, minlength=len(SPLITS))
    _check_split_sizes(folder, counts, val_fraction, test_fraction)
    key = files_key(folder.paths, {"image_size": size, "format": CACHE_FORMAT})
    images = _decoded(key, folder.paths, root, size)
    labels = torch.tensor(folder.labels, dtype=torch.int64)
    contents = Contents(images, labels, torch.from_numpy(splits))
    spec = DatasetSpec(
        name=NAME, task="classification", input_shape=tuple(images.shape[1:]),
        output_size=len(folder.classes), train_size=int(counts[0]), val_size=int(counts[1]),
        test_size=int(counts[2]), num_classes=len(folder.classes),
    )  # fmt: skip
    return spec, contents


def _check_settings(
    path: str | None,
    image_size: int | tuple[int, int],
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    translate: int,
) -> tuple[int, int]:
    """The ranges config types cannot say; the image size as (height, width)."""
    require(bool(path), f"dataset.path is not set; {HOW}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    require(
        all(1 <= side <= MAX_SIDE for side in size),
        f"dataset.image_size must be from 1 to {MAX_SIDE} pixels (one number for a square, or "
        f"[height, width]), got {image_size}",
    )
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        require(
            0 < value < 1,
            f"dataset.{key} must be in (0, 1), got {value} (set dataset.{key}=<a number in (0, 1)>)",
        )
    require(
        val_fraction + test_fraction < 1,
        f"dataset.val_fraction + dataset.test_fraction must be below 1 (training keeps the rest), "
        f"got {val_fraction} + {test_fraction}; lower them",
    )
    require(0 <= split_seed < 2**63, f"dataset.split_seed must be in [0, 2^63), got {split_seed}")
    limit = min(size) // 2
    require(
        0 <= translate <= limit,
        f"dataset.translate must be in [0, {limit}] pixels (half the image's shorter side), got "
        f"{translate}",
    )
    return size  # type: ignore[return-value]


def _subfolders(folder: Path) -> list[str]:
    """The sorted names of the folders in ``folder``, hidden ones left out."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    """The image files below ``folder`` (as torchvision's ImageFolder finds them: at any depth),
    by extension, hidden files and folders left out; in a fixed order."""
    found = []
    for parent, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        found += [
            Path(parent, name)
            for name in sorted(files)
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS
        ]
    return found


def _split_folders(path: str, top: Path) -> dict[int, Path]:
    """The split folders (index into SPLITS -> folder): train/ (val/, test/), or ``top`` as
    train when it holds class folders only."""
    subfolders = _subfolders(top)
    named = [name for name in SPLITS if name in subfolders]
    if not named:
        return {0: top}
    others = [name for name in subfolders if name not in SPLITS]
    if others:
        raise DataError(
            f"dataset.path={path} holds split folders ({', '.join(named)}) and other folders "
            f"({', '.join(others[:5])}); keep either train/ (val/, test/) or class folders there"
        )
    if "train" not in named:
        raise DataError(
            f"dataset.path={path} has {'/ and '.join(named)}/ but no train/; add {top / 'train'} "
            "with a folder per class (or put class folders directly in the folder)"
        )
    return {SPLITS.index(name): top / name for name in named}


def _scan(path: str) -> Folder:
    """Find the classes and images; one-line errors for every layout problem."""
    top = Path(path).expanduser()
    if not top.exists():
        raise DataError(f"dataset.path={path} does not exist; {HOW}")
    if not top.is_dir():
        raise DataError(f"dataset.path={path} is a file, not a folder; {HOW}")
    splits = _split_folders(path, top)
    classes = _subfolders(splits[0])
    if not classes:
        raise DataError(
            f"dataset.path: {splits[0]} holds no class folders; put each class's images in "
            f"{splits[0]}/<class>/"
        )
    if len(classes) < 2:
        raise DataError(
            f"dataset.path: {splits[0]} has one class folder ({classes[0]}); a classifier needs "
            "at least 2, so add a folder per class"
        )
    paths: list[Path] = []
    labels: list[int] = []
    folders: list[int] = []
    for index, folder in splits.items():
        for label, name in _split_classes(folder, classes):
            images = _images(folder / name)
            if not images:
                raise DataError(
                    f"dataset.path: class folder {folder / name} holds no images "
                    f"({', '.join(sorted(e[1:] for e in EXTENSIONS))}); add some or remove it"
                )
            paths += images
            labels += [label] * len(images)
            folders += [index] * len(images)
    present = tuple(index in splits for index in range(len(SPLITS)))
    return Folder(tuple(classes), tuple(paths), tuple(labels), tuple(folders), present)  # type: ignore[arg-type]


def _split_classes(folder: Path, classes: list[str]) -> list[tuple[int, str]]:
    """(label, name) of each class folder in a split folder; every one must be a training class."""
    names = _subfolders(folder)
    if not names:
        raise DataError(
            f"dataset.path: {folder} holds no class folders; put its images in {folder}/<class>/ "
            "or remove it"
        )
    for name in names:
        if name not in classes:
            raise DataError(
                f"dataset.path: class folder {folder / name} is not a training class (train/ has "
                f"no {name}/); add {folder.parent / 'train' / name} or remove it"
            )
    return [(classes.index(name), name) for name in names]


def _stratified(counts: np.ndarray, fraction: float, limit: np.ndarray) -> np.ndarray:
    """Per-class shares of round(total x fraction) images in proportion to the class sizes (the
    largest remainders take the leftover ones), at most ``limit`` per class, so a carved split
    keeps the class balance."""
    exact = counts * fraction
    shares = np.minimum(np.floor(exact).astype(np.int64), limit)
    leftover = round(float(counts.sum()) * fraction) - int(shares.sum())
    order = np.argsort(shares - exact, kind="stable")  # the largest shortfall first
    order = order[shares[order] < limit[order]]
    shares[order[: max(leftover, 0)]] += 1
    return shares


def _assign_splits(
    folder: Folder, val_fraction: float, test_fraction: float, split_seed: int
) -> np.ndarray:
    """Each image's split: its folder's, or for a split without a folder, a draw (with
    ``split_seed``) from the training images, stratified; every class keeps a training image."""
    splits = np.array(folder.folders, dtype=np.int64)
    carved = [(i, f) for i, f in ((2, test_fraction), (1, val_fraction)) if not folder.present[i]]
    if not carved:
        return splits
    labels = np.array(folder.labels, dtype=np.int64)
    train = np.flatnonzero(splits == 0)
    counts = np.bincount(labels[train], minlength=len(folder.classes))
    spare = counts - 1  # what a class can give away
    quotas = []
    for _, share in carved:
        quota = _stratified(counts, share, spare)
        spare -= quota
        quotas.append(quota)
    generator = np.random.default_rng(split_seed)
    by_class = train[np.argsort(labels[train], kind="stable")]
    for label, members in enumerate(np.split(by_class, np.cumsum(counts)[:-1])):
        members = generator.permutation(members)
        start = 0
        for (index, _), quota in zip(carved, quotas, strict=True):
            splits[members[start : start + quota[label]]] = index
            start += quota[label]
    return splits


def _check_split_sizes(
    folder: Folder, counts: np.ndarray, val_fraction: float, test_fraction: float
) -> None:
    """A carved split can come out empty when there are few images; say which and the counts."""
    fractions = {1: ("val_fraction", val_fraction), 2: ("test_fraction", test_fraction)}
    for index, (key, value) in fractions.items():
        if counts[index] == 0:
            raise DataError(
                f"dataset.path: the {SPLITS[index]} split is empty ({counts[0]} train, "
                f"{counts[1]} val, {counts[2]} test of {len(folder.paths)} images in "
                f"{len(folder.classes)} classes); raise dataset.{key} (now {value}) or add images"
            )


@functools.lru_cache(maxsize=2)
def _decoded(key: str, paths: tuple[Path, ...], root: str, size: tuple[int, int]) -> torch.Tensor:
    """Every image as uint8 N x C x H x W: from the cache when it was made for ``key``, else
    decoded and cached. Memoized, so a sweep's preflight decodes once per process."""
    path = cache_path(root, NAME, key)
    cached = read_cache(path, key)
    if cached is not None:
        return cached["images"]
    log.info("decoding %d images (once; cached in %s)", len(paths), path)
    images = _decode_all(paths, size)
    write_cache(path, key, {"images": images})
    return images


def _decode_all(paths: tuple[Path, ...], size: tuple[int, int]) -> torch.Tensor:
    """Decode on a few threads (Pillow decodes and resizes without the GIL): all grey images
    give one channel, any colour image makes every image RGB (grey repeated, as Pillow does)."""
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        arrays = list(pool.map(functools.partial(_decode_image, size=size), paths))
    finally:
        pool.shutdown(cancel_futures=True)  # a bad image stops the rest
    channels = 3 if any(array.ndim == 3 for array in arrays) else 1
    images = np.empty((len(arrays), channels, *size), dtype=np.uint8)
    for index, array in enumerate(arrays):
        images[index] = array.transpose(2, 0, 1) if array.ndim == 3 else array
    return torch.from_numpy(images)


def _decode_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (H, W) when grey or (H, W, 3) when colour, resized with Pillow's
    antialiasing bilinear filter; an unreadable file is a one-line error naming it."""
    from PIL import Image, UnidentifiedImageError

    height, width = size
    try:
        with Image.open(path) as image:
            image.draft(image.mode, (width, height))  # JPEG: decode at a reduced scale if larger
            eight_bit = _eight_bit(image)
            return np.asarray(eight_bit.resize((width, height), Image.Resampling.BILINEAR))
    except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError, zlib errors...
        reason = (
            "cannot identify image file"
            if isinstance(error, UnidentifiedImageError)
            else first_line(error) or type(error).__name__
        )
        raise DataError(
            f"dataset.path: cannot read {path} ({reason}); remove or replace it"
        ) from None


def _eight_bit(image: Image) -> Image:
    """Mode L for a grey image (16-bit grey scaled to 8 bits, not clipped), RGB for colour."""
    from PIL import Image as PillowImage

    if image.mode.startswith("I"):  # I, I;16, I;16B...: 16-bit grey (PNG, TIFF)
        values = np.asarray(image, dtype=np.float32) / 257
        return PillowImage.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8))
    if image.mode in GREY_MODES or (image.mode == "P" and _grey_palette(image)):
        return image.convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # (Pillow warns on P -> RGB with transparency)
    return image.convert("RGB")


def _grey_palette(image: Image) -> bool:
    """Whether every colour of a palette image's palette is a grey."""
    palette = image.getpalette() or []
    return palette[0::3] == palette[1::3] == palette[2::3]
