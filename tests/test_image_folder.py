"""dataset=image_folder: scikit-learn's 8x8 digits written as PNG files in both ImageFolder
layouts, read back exactly, split with the class balance kept, cached, refused in one line when
wrong, and learned by the cnn."""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import compose_config, train_run
from trainlab.data import describe_dataset, load_dataset
from trainlab.data import image_folder as folder_module
from trainlab.errors import ConfigError, UserError


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as uint8 images (0..16 scaled to 0..255) and their labels, read
    from its data file: importing sklearn would cost two seconds."""
    package = importlib.util.find_spec("sklearn")
    if package is None:
        pytest.skip("the digits come with scikit-learn (the dev extra)")
    table = Path(package.origin).parent / "datasets" / "data" / "digits.csv.gz"  # type: ignore[union-attr,arg-type]
    if table.is_file():
        values = np.loadtxt(table, delimiter=",")
        images, labels = values[:, :-1].reshape(-1, 8, 8), values[:, -1].astype(np.int64)
    else:  # another layout of the package
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        images = images.reshape(-1, 8, 8)
    return np.round(images * 255 / 16).astype(np.uint8), labels


def flat(index: int) -> str:
    return ""


def train_or_test(index: int) -> str:
    return "test" if index % 5 == 0 else "train"


def write_digits(top: Path, count: int = 300, split: Callable[[int], str] = flat) -> Path:
    """The first ``count`` digits as ``top/[split/]<label>/<index>.png``."""
    images, labels = digits()
    for index in range(count):
        folder = top / split(index) / str(labels[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index:04d}.png")
    return top


def settings(path: Path | str | None, root: Path, **changes) -> dict:
    """image_folder's settings as conf/dataset/image_folder.yaml has them, at 8x8."""
    return {
        "name": "image_folder", "path": None if path is None else str(path), "root": str(root), "image_size": 8,
        "val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0, "normalize": "channel",
        "flip": False, "translate": 0, **changes,
    }  # fmt: skip


def by_bytes(images: torch.Tensor) -> list[bytes]:
    return [image.numpy().tobytes() for image in images]


def test_flat_folder_splits_stratified_and_reads_pixels_exactly(tmp_path):
    data = load_dataset(settings(write_digits(tmp_path / "digits"), tmp_path / "data"))
    spec = data.spec
    assert (spec.name, spec.task, spec.input_shape) == ("image_folder", "classification", (1, 8, 8))
    assert spec.output_size == spec.num_classes == 10
    assert (spec.train_size, spec.val_size, spec.test_size) == (240, 30, 30)
    assert [len(data.train), len(data.val), len(data.test)] == [240, 30, 30]
    assert data.train.inputs.dtype == torch.uint8 and data.train.targets.dtype == torch.int64
    images, labels = digits()
    counts = np.bincount(labels[:300], minlength=10)
    for split in (data.val, data.test):  # stratified: each class within one image of its share
        assert np.all(np.abs(np.bincount(split.targets.numpy(), minlength=10) - counts / 10) < 1)
    label_of = {
        image.tobytes(): label for image, label in zip(images[:300], labels[:300], strict=True)
    }
    everything = [data.train, data.val, data.test]
    stored = [b for split in everything for b in by_bytes(split.inputs)]
    assert sorted(stored) == sorted(label_of)  # every image once, pixels unchanged
    for split in everything:
        assert [label_of[b] for b in by_bytes(split.inputs)] == split.targets.tolist()
    mean = data.train.inputs.double().mean() / 255  # channel statistics of the training split
    assert data.prepare.mean.flatten().item() == pytest.approx(mean.item(), rel=1e-5)


def test_split_seed_chooses_the_carved_images(tmp_path):
    path = write_digits(tmp_path / "digits", 100)
    val = [
        sorted(by_bytes(load_dataset(settings(path, tmp_path, split_seed=seed)).val.inputs))
        for seed in (0, 0, 1)
    ]
    assert val[0] == val[1] != val[2]


def test_train_and_test_folders_with_val_carved_or_given(tmp_path):
    path = write_digits(tmp_path / "digits", split=train_or_test)  # 240 train, 60 test
    spec = describe_dataset(settings(path, tmp_path / "data"))
    assert (spec.train_size, spec.val_size, spec.test_size) == (216, 24, 60)

    def with_val(index: int) -> str:
        return "val" if index % 5 == 1 else train_or_test(index)

    path = write_digits(tmp_path / "with_val", split=with_val)
    data = load_dataset(settings(path, tmp_path / "data"))
    assert [len(data.train), len(data.val), len(data.test)] == [180, 60, 60]
    images, _ = digits()
    assert sorted(by_bytes(data.test.inputs)) == sorted(i.tobytes() for i in images[:300:5])


def test_one_colour_image_makes_every_image_rgb(tmp_path):
    path = write_digits(tmp_path / "digits", 60)
    assert describe_dataset(settings(path, tmp_path)).input_shape == (
        1, 8, 8,
    )  # fmt: skip
    Image.fromarray(np.full((8, 8, 3), (255, 0, 0), dtype=np.uint8)).save(path / "3" / "red.png")
    green = np.full((48, 64, 3), (0, 200, 90), dtype=np.uint8)  # a larger JPEG, shrunk
    Image.fromarray(green).save(path / "4" / "green.jpg", quality=95)
    data = load_dataset(settings(path, tmp_path, image_size=[12, 16]))
    assert data.spec.input_shape == (3, 12, 16) and data.train.inputs.shape[1:] == (3, 12, 16)
    everything = torch.cat([data.train.inputs, data.val.inputs, data.test.inputs])
    red = (everything[:, 0] == 255).all((1, 2)) & (everything[:, 1:] == 0).all((1, 2, 3))
    target = torch.tensor([0, 200, 90]).reshape(1, 3, 1, 1)
    greenish = ((everything.int() - target).abs() <= 6).all((1, 2, 3))
    assert red.sum() == 1 and greenish.sum() == 1
    grey = everything[~red & ~greenish]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 0], grey[:, 2])


def test_grey_modes_stay_one_channel(tmp_path):
    """8-bit, 1-bit, grey-with-alpha, 16-bit (scaled, not clipped) and grey-palette files."""
    ramp = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(ramp).save(tmp_path / "a" / "l.png")
    Image.fromarray(ramp.astype(np.uint16) * 257).save(tmp_path / "a" / "sixteen.png")
    Image.fromarray(ramp).convert("LA").save(tmp_path / "a" / "la.png")
    Image.fromarray(ramp).convert("1").save(tmp_path / "b" / "one.bmp")
    Image.fromarray(ramp).convert("P").save(tmp_path / "b" / "palette.gif")
    Image.fromarray(ramp).save(tmp_path / "b" / "grey.tiff")
    with Image.open(tmp_path / "a" / "sixteen.png") as image:
        assert image.mode.startswith("I")
    data = load_dataset(settings(tmp_path, tmp_path / "data", val_fraction=0.2, test_fraction=0.2))
    assert data.spec.input_shape == (1, 8, 8) and data.spec.num_classes == 2
    everything = torch.cat([data.train.inputs, data.val.inputs, data.test.inputs])
    matches = (everything[:, 0] == torch.from_numpy(ramp)).all((1, 2))
    assert matches.sum() == 5  # all but the 1-bit image, which is black and white
    assert set(everything[~matches].unique().tolist()) == {0, 255}


def test_decoded_once_then_read_from_the_cache_until_a_file_changes(tmp_path, monkeypatch):
    path, root = write_digits(tmp_path / "digits", 50), tmp_path / "data"
    decoded: list[Path] = []
    original = folder_module._decode_image
    monkeypatch.setattr(
        folder_module, "_decode_image", lambda p, size: decoded.append(p) or original(p, size)
    )
    first = load_dataset(settings(path, root))
    describe_dataset(settings(path, root))  # memoized: no decode
    assert len(decoded) == 50 and len(list((root / "trainlab-cache").iterdir())) == 1
    folder_module._decoded.cache_clear()  # as a new process would start
    again = load_dataset(settings(path, root))
    assert len(decoded) == 50  # read from the cache
    assert torch.equal(first.train.inputs, again.train.inputs)
    changed = next(path.rglob("*.png"))
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    load_dataset(settings(path, root))
    assert len(decoded) == 100  # decoded again
    load_dataset(settings(path, root, image_size=10))
    assert len(decoded) == 150  # a new size is a new cache entry


def test_the_config_group_checks_types_and_requires_a_path(tmp_path):
    path = write_digits(tmp_path / "digits", 40)
    base = ("dataset=image_folder", f"dataset.root={tmp_path / 'data'}")
    with pytest.raises(ConfigError, match=r"dataset\.path is not set; set dataset\.path=<folder>"):
        describe_dataset(compose_config(*base).dataset)
    config = compose_config(*base, f"dataset.path={path}")
    assert describe_dataset(config.dataset).input_shape == (1, 32, 32)
    with pytest.raises(ConfigError, match="image_size must be an integer or a list of 2 integer"):
        describe_dataset(
            compose_config(*base, f"dataset.path={path}", "dataset.image_size=[8,8,8]").dataset
        )


def make_empty(top: Path) -> Path:
    top.mkdir()
    return top


def make_file(top: Path) -> Path:
    top.write_text("not a folder")
    return top


def make_classless(top: Path) -> Path:
    write_digits(top, 20)
    for image in (top / "7").iterdir():
        image.unlink()
    (top / "7" / "notes.txt").write_text("no images here")
    (top / "7" / ".hidden.png").write_bytes(b"")
    return top


def make_one_class(top: Path) -> Path:
    (top / "cat").mkdir(parents=True)
    Image.fromarray(digits()[0][0]).save(top / "cat" / "a.png")
    return top


def make_corrupt(top: Path) -> Path:
    write_digits(top, 20)
    (top / "3" / "x.png").write_bytes(b"not an image")
    return top


def make_truncated(top: Path) -> Path:
    write_digits(top, 20)
    image = next((top / "4").iterdir())
    image.write_bytes(image.read_bytes()[:60])
    return top


def make_dead_link(top: Path) -> Path:
    write_digits(top, 20)
    (top / "5" / "gone.png").symlink_to(top / "nowhere.png")
    return top


def make_tiny(top: Path) -> Path:
    for label in ("a", "b"):
        (top / label).mkdir(parents=True)
        for index in range(2):
            Image.fromarray(digits()[0][index]).save(top / label / f"{index}.png")
    return top


def make_unknown_test_class(top: Path) -> Path:
    write_digits(top, 100, split=train_or_test)
    (top / "test" / "bird").mkdir()
    Image.fromarray(digits()[0][0]).save(top / "test" / "bird" / "b.png")
    return top


def make_mixed(top: Path) -> Path:
    write_digits(top, 20, split=train_or_test)
    write_digits(top, 20)
    return top


def make_test_only(top: Path) -> Path:
    write_digits(top, 20, split=lambda index: "test")
    return top


BAD_FOLDERS = {
    "missing": (lambda top: top, "does not exist; set dataset.path=<folder>"),
    "file": (make_file, "is a file, not a folder; set dataset.path=<folder>"),
    "empty": (make_empty, "holds no class folders; put each class's images in"),
    "class without images": (make_classless, r"class folder \S+/7 holds no images \(bmp, "),
    "one class": (make_one_class, r"has one class folder \(cat\); a classifier needs at least 2"),
    "corrupt image": (
        make_corrupt,
        r"dataset\.path: cannot read \S+/3/x\.png \(cannot identify image file\); remove or "
        "replace it$",
    ),
    "truncated image": (make_truncated, r"cannot read \S+/4/\d+\.png \(.+\); remove or replace"),
    "broken link": (make_dead_link, r"cannot read \S+/5/gone\.png \(.+\); remove or replace"),
    "too few images": (
        make_tiny,
        r"the val split is empty \(4 train, 0 val, 0 test of 4 images in 2 classes\); raise "
        r"dataset\.val_fraction \(now 0\.1\) or add images",
    ),
    "test class not in train": (
        make_unknown_test_class,
        r"class folder \S+/test/bird is not a training class \(train/ has no bird/\); add \S+",
    ),
    "mixed layouts": (make_mixed, r"holds split folders \(train, test\) and other folders \(0, 1"),
    "test without train": (make_test_only, "has test/ but no train/"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_a_bad_folder_is_one_line_naming_the_fix_and_writes_nothing(case, tmp_path):
    make, message = BAD_FOLDERS[case]
    path, root = make(tmp_path / "images"), tmp_path / "data"
    with pytest.raises(UserError, match=message) as raised:
        describe_dataset(settings(path, root))
    assert "\n" not in str(raised.value)
    assert not root.exists()


BAD_SETTINGS = {
    "no path": ({"path": None}, r"dataset\.path is not set; set dataset\.path=<folder>"),
    "val fraction": ({"val_fraction": 1.5}, r"dataset\.val_fraction must be in \(0, 1\), got 1\.5"),
    "test fraction": ({"test_fraction": 0}, r"dataset\.test_fraction must be in \(0, 1\), got 0"),
    "fractions": ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
    "image size": ({"image_size": 0}, "dataset.image_size must be from 1 to 4096 pixels"),
    "translate": ({"translate": 5}, r"dataset\.translate must be in \[0, 4\] pixels"),
    "split seed": ({"split_seed": -1}, r"dataset\.split_seed must be in \[0, 2\^63\)"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_bad_setting_is_refused_before_the_folder_is_read(case, tmp_path):
    changes, message = BAD_SETTINGS[case]
    with pytest.raises(ConfigError, match=message):
        describe_dataset(settings(tmp_path / "nowhere", tmp_path) | changes)


def test_resnet_trains_on_a_colour_folder(tmp_path):
    path = write_digits(tmp_path / "digits", 60)
    Image.fromarray(np.full((8, 8, 3), (0, 200, 90), dtype=np.uint8)).save(path / "5" / "g.png")
    config = compose_config(
        "dataset=image_folder", f"dataset.path={path}", f"dataset.root={tmp_path / 'data'}",
        "dataset.image_size=16", "model=resnet", "model.width=4", "epochs=2", "batch_size=16",
    )  # fmt: skip
    metrics = train_run(config, tmp_path / "run")
    assert metrics["status"] in ("completed", "early_stopped"), metrics.get("message")


def test_cnn_learns_the_digits_folder(tmp_path):
    """Real data: the whole digits set as files, split 80/10/10; a small cnn learns it."""
    path = write_digits(tmp_path / "digits", 1797)
    config = compose_config(
        "dataset=image_folder", f"dataset.path={path}", f"dataset.root={tmp_path / 'data'}",
        "dataset.image_size=8", "model=cnn", "model.channels=[16,32]", "model.dense=64",
        "epochs=4", "batch_size=32",
    )  # fmt: skip
    metrics = train_run(config, tmp_path / "run")
    assert metrics["status"] in ("completed", "early_stopped"), metrics.get("message")
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]
