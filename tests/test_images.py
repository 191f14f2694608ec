"""Image datasets through the real code path: files in their real formats, torchvision's
readers, the uint8 cache, splits, batch preparation and augmentation, and the data errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import compose_config, run_cli, run_in_children, train_run
from tests.image_files import write_cifar_dataset, write_idx_dataset
from trainlab.data import InMemoryLoader, load_dataset
from trainlab.data import images as image_files
from trainlab.data.cache import read_cache
from trainlab.data.images import DataError
from trainlab.data.transforms import ImageBatches, random_flip, random_translate

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def image_config(name: str, root: Path, **changes):
    config = dict(compose_config(f"dataset={name}", f"dataset.root={root}").dataset)
    config.update({"download": False, **changes})
    return config


@pytest.mark.parametrize(("name", "folder", "gzipped"), [
    ("mnist", "MNIST/raw", False),
    ("fashion_mnist", "FashionMNIST/raw", True),
])  # fmt: skip
def test_idx_files_load_through_torchvision(name, folder, gzipped, tmp_path):
    write_idx_dataset(tmp_path / folder, train=120, test=30, gzipped=gzipped)
    data = load_dataset(image_config(name, tmp_path, val_size=20))
    assert data.spec.input_shape == (1, 28, 28) and data.spec.num_classes == 10
    assert [len(data.train), len(data.val), len(data.test)] == [100, 20, 30]
    assert data.train.inputs.dtype == torch.uint8 and data.train.inputs.shape[1:] == (1, 28, 28)
    # The test split is the official test file, in order: image i is filled with 100 + i.
    assert data.test.inputs[:, 0, 5, 5].tolist() == [100 + i for i in range(30)]
    assert data.test.targets.tolist() == [(100 + i) % 10 for i in range(30)]
    # Train and validation are disjoint and together the whole training file.
    seen = torch.cat([data.train.inputs[:, 0, 5, 5], data.val.inputs[:, 0, 5, 5]]).tolist()
    assert sorted(seen) == list(range(120))
    labels = torch.cat([data.train.targets, data.val.targets]).tolist()
    assert all(label == value % 10 for label, value in zip(labels, seen, strict=True))


def test_cifar_pickle_batches_load_through_torchvision(tmp_path):
    write_cifar_dataset(tmp_path, per_batch=20, test=15)
    data = load_dataset(image_config("cifar10", tmp_path, val_size=10))
    assert data.spec.input_shape == (3, 32, 32)
    assert [len(data.train), len(data.val), len(data.test)] == [90, 10, 15]
    assert data.test.inputs[:, :, 7, 7].tolist() == [[100 + i, 10, 250] for i in range(15)]
    seen = sorted(torch.cat([data.train.inputs, data.val.inputs])[:, 0, 0, 0].tolist())
    assert seen == list(range(100))


def test_decoded_images_are_cached_and_reused(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "MNIST/raw", train=50, test=10, gzipped=False)
    first = load_dataset(image_config("mnist", tmp_path, val_size=10))
    cache = tmp_path / "trainlab-cache" / f"mnist-uint8-v{image_files.CACHE_FORMAT}.pt"
    assert cache.is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(image_files, "_decode", no_decoding)
    second = load_dataset(image_config("mnist", tmp_path, val_size=10))
    assert torch.equal(first.train.inputs, second.train.inputs)


def test_changed_files_are_decoded_again(tmp_path):
    write_idx_dataset(tmp_path / "MNIST/raw", train=50, test=10, gzipped=False)
    assert len(load_dataset(image_config("mnist", tmp_path, val_size=10)).train) == 40
    write_idx_dataset(tmp_path / "MNIST/raw", train=80, test=10, gzipped=False)
    assert len(load_dataset(image_config("mnist", tmp_path, val_size=10)).train) == 70


def test_a_truncated_gz_file_is_one_clear_error(tmp_path):
    folder = tmp_path / "MNIST/raw"
    write_idx_dataset(folder, train=50, test=10, gzipped=True)
    packed = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError) as error:
        load_dataset(image_config("mnist", tmp_path, val_size=10))
    message = str(error.value)
    assert "\n" not in message and "could not be read" in message and str(folder) in message


def test_a_corrupt_cache_is_rebuilt(tmp_path):
    write_idx_dataset(tmp_path / "MNIST/raw", train=50, test=10, gzipped=False)
    cache = tmp_path / "trainlab-cache" / f"mnist-uint8-v{image_files.CACHE_FORMAT}.pt"
    cache.parent.mkdir()
    cache.write_bytes(b"not a torch file")
    data = load_dataset(image_config("mnist", tmp_path, val_size=10))
    assert len(data.train) == 40
    rebuilt = torch.load(cache, weights_only=True)
    assert (
        rebuilt["train_images"].shape == (50, 1, 28, 28)
        and "train-images" in rebuilt["fingerprint"]
    )


def test_a_cache_damaged_after_writing_is_detected_and_rebuilt(tmp_path, caplog):
    write_idx_dataset(tmp_path / "MNIST/raw", train=50, test=10, gzipped=False)
    first = load_dataset(image_config("mnist", tmp_path, val_size=10))
    cache = tmp_path / "trainlab-cache" / f"mnist-uint8-v{image_files.CACHE_FORMAT}.pt"
    tensors = torch.load(cache, weights_only=True)
    tensors["train_images"][3, 0, 5, 5] ^= 0xFF  # one flipped byte, the file still loads
    torch.save(tensors, cache)
    with caplog.at_level("WARNING", logger="trainlab"):
        again = load_dataset(image_config("mnist", tmp_path, val_size=10))
    assert "damaged dataset cache" in caplog.text
    assert torch.equal(first.train.inputs, again.train.inputs)


def build_cache(root: str) -> None:
    """In a child process: read (and cache) the images, print their sum to a file of its own."""
    tensors = image_files.read_images("mnist", root, False)
    Path(root, f"sum-{os.getpid()}").write_text(str(int(tensors["train_images"].sum())))


def test_two_processes_building_the_cache_at_once(tmp_path):
    write_idx_dataset(tmp_path / "MNIST/raw", train=3000, test=500, gzipped=True)
    assert run_in_children(build_cache, str(tmp_path), count=2) == [0, 0]
    sums = [path.read_text() for path in tmp_path.glob("sum-*")]
    assert len(sums) == 2 and sums[0] == sums[1]
    cache_files = list((tmp_path / "trainlab-cache").iterdir())
    assert [f.name for f in cache_files] == [
        f"mnist-uint8-v{image_files.CACHE_FORMAT}.pt"
    ]  # no leftovers
    assert read_cache(cache_files[0], None) is not None  # intact, checksum verified


def test_split_depends_on_split_seed_only(tmp_path):
    write_idx_dataset(tmp_path / "MNIST/raw", train=100, test=10, gzipped=False)
    a = load_dataset(image_config("mnist", tmp_path, val_size=20, split_seed=1))
    b = load_dataset(image_config("mnist", tmp_path, val_size=20, split_seed=1))
    c = load_dataset(image_config("mnist", tmp_path, val_size=20, split_seed=2))
    assert torch.equal(a.val.inputs, b.val.inputs) and not torch.equal(a.val.inputs, c.val.inputs)
    smaller = load_dataset(
        image_config("mnist", tmp_path, val_size=20, split_seed=1, train_size=30)
    )
    assert len(smaller.train) == 30 and torch.equal(smaller.val.inputs, a.val.inputs)


def test_missing_files_give_one_line_naming_them_and_the_fix(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset(image_config("mnist", tmp_path / "empty"))
    message = str(error.value)
    assert "\n" not in message
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "empty" / "MNIST/raw") in message
    assert "dataset.root" in message and "TRAINLAB_DATA" in message
    assert not (tmp_path / "empty").exists()


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    source = image_files.SOURCES["fashion_mnist"]
    away = dataclasses.replace(source, system_copies=(str(tmp_path / "not-installed"),))
    monkeypatch.setitem(image_files.SOURCES, "fashion_mnist", away)
    with pytest.raises(DataError) as error:
        load_dataset(image_config("fashion_mnist", tmp_path / "empty"))
    assert str(error.value).endswith(
        f"or install Debian's copy, which trainlab finds in {tmp_path / 'not-installed'}: "
        "apt-get install dataset-fashion-mnist"
    )


def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        Path(self.raw_folder).mkdir(parents=True)
        (Path(self.raw_folder) / "train-images-idx3-ubyte.gz").write_bytes(b"partial")
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nName or service not known"
        )

    monkeypatch.setattr(image_files.SOURCES["mnist"].reader_class(), "download", offline)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="download failed") as error:
        load_dataset(image_config("mnist", root, download=True))
    assert "\n" not in str(error.value)
    assert list(root.rglob("*")) == []  # no partial files, no cache


def test_batch_preparation_normalizes_with_training_statistics():
    images = (
        torch.tensor([0, 51, 102, 255], dtype=torch.uint8).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    )
    mean, std = torch.tensor([0.4]), torch.tensor([0.2])
    prepared = ImageBatches("channel", mean, std, flip=False, translate=0).normalize(
        images, chunk=3
    )
    assert prepared[:, 0, 0, 0].tolist() == pytest.approx([-2.0, -1.0, 0.0, 3.0])
    scaled = ImageBatches("none", mean, std, flip=False, translate=0).normalize(images)
    assert scaled.max().item() == 1.0 and scaled.min().item() == 0.0
    per_image = ImageBatches("image", mean, std, flip=False, translate=0).normalize(
        torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8)
    )
    assert per_image.flatten(1).mean(1).abs().max().item() < 1e-5


def test_augmentation_keeps_shapes_and_changes_images():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    flipped = random_flip(images, generator)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    unchanged = (flipped == images).flatten(1).all(1)
    assert flipped.shape == images.shape and bool((mirrored | unchanged).all())
    assert 10 < int(mirrored.sum()) < 54
    moved = random_translate(images, 2, generator)
    assert moved.shape == images.shape
    assert (moved != images).flatten(1).any(1).float().mean() > 0.8
    # A shift moves content: every moved image equals its original shifted by some (dy, dx).
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(8):
        assert any(
            torch.equal(moved[i], padded[i, :, 2 + dy : 10 + dy, 2 + dx : 10 + dx])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )


def test_loader_augments_training_batches_and_keeps_labels(tmp_path):
    write_cifar_dataset(tmp_path, per_batch=20, test=10)
    data = load_dataset(image_config("cifar10", tmp_path, val_size=10, normalize="none"))
    data = data.to(torch.device("cpu"))  # normalized there: float inputs in [0, 1]
    loader = InMemoryLoader(data.train, 30, shuffle=True, seed=0, prepare=data.prepare)
    seen = []
    for inputs, targets in loader:
        assert inputs.dtype == torch.float32 and inputs.shape[1:] == (3, 32, 32)
        # The red channel's centre still identifies the image, so the label must match it.
        identity = (inputs[:, 0, 16, 16] * 255).round().long()
        assert torch.equal(identity % 10, targets)
        seen += identity.tolist()
        border_zeros = (inputs[:, 2, 0, :] == 0).all(1) | (inputs[:, 2, -1, :] == 0).all(1)
        assert border_zeros.any()  # some images were translated vertically (blue is 250)
    assert sorted(seen) == sorted((data.train.inputs[:, 0, 16, 16] * 255).round().long().tolist())


@pytest.mark.parametrize("model", ["cnn", "resnet"])
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_conv_models_train_on_both_image_shapes(model, dataset, tmp_path):

    if dataset == "mnist":
        write_idx_dataset(tmp_path / "MNIST/raw", train=96, test=32, gzipped=True)
    else:
        write_cifar_dataset(tmp_path, per_batch=24, test=32)
    extra = (
        ["model.width=8"] if model == "resnet" else ["model.channels=[8,16,16]", "model.dense=16"]
    )
    config = compose_config(
        f"dataset={dataset}", f"model={model}", f"dataset.root={tmp_path}", "dataset.download=false",
        "dataset.val_size=32", "epochs=3", "batch_size=16", *extra,
    )  # fmt: skip
    metrics = train_run(config, tmp_path / "run")
    assert metrics["status"] in ("completed", "early_stopped")
    history = metrics["history"]["train_loss"]
    assert history[-1] < history[0]


def test_bf16_autocast_and_channels_last_run_on_cpu(tmp_path):

    write_idx_dataset(tmp_path / "MNIST/raw", train=96, test=32, gzipped=False)
    config = compose_config(
        "dataset=mnist", "model=cnn", "model.channels=[8,16]", "model.dense=16",
        f"dataset.root={tmp_path}", "dataset.download=false", "dataset.val_size=32", "epochs=2",
        "batch_size=16", "precision=bf16", "channels_last=true",
    )  # fmt: skip
    metrics = train_run(config, tmp_path / "run")
    assert metrics["status"] in ("completed", "early_stopped")
    assert all(torch.isfinite(torch.tensor(metrics["history"]["train_loss"])))


def test_cnn_on_synthetic_data_is_refused():
    from trainlab.errors import ConfigError

    with pytest.raises(ConfigError, match="model=cnn needs image data"):
        train_run(compose_config("model=cnn"), Path("/nonexistent"))


@pytest.mark.skipif(
    not SYSTEM_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_fashion_mnist_mlp_reaches_84_percent_in_two_epochs(tmp_path):
    """Real data: the system copy is found, decoded, cached under $TRAINLAB_DATA, and an MLP
    trained for two epochs on the CPU reaches at least 84 % test accuracy."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "dataset=fashion_mnist", "model=mlp", "epochs=2", "device=cpu", f"hydra.run.dir={run_dir}",
        cwd=tmp_path, env={"TRAINLAB_DATA": str(tmp_path / "data")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.84, metrics["test"]
    assert (tmp_path / "data" / "trainlab-cache").is_dir()
    assert not (tmp_path / "data" / "FashionMNIST").exists()  # read in place, not copied
