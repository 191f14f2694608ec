"""One epoch of MNIST-shaped training three ways, on the same machine:

(a) the classic recipe: torchvision MNIST + ToTensor/Normalize + DataLoader(batch_size=64,
    shuffle=True) + MLP 784-128-10 + Adam(1e-3) + cross-entropy;
(b) a minimal hand-written loop over in-memory tensors, same model, batch size and optimizer;
(c) trainlab dataset=mnist model=mlp model.hidden_sizes=[128] ... doing the same work.

Data: real MNIST from the trainlab data root when present, else the Fashion-MNIST system copy
(same shape and format), else generated images of that shape, all as IDX files read by
torchvision's MNIST class. (c) is timed twice: its training epoch alone (from the run's
metrics.json) and the whole command with interpreter start-up.

    python scripts/bench_mnist.py [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision import transforms

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MEAN, STD = 0.1307, 0.3081


def _copy_idx(source: Path, target: Path) -> None:
    for name in IDX_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
        else:
            with gzip.open(source / f"{name}.gz") as packed, open(target / name, "wb") as plain:
                shutil.copyfileobj(packed, plain)


def _generate_idx(target: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 60000), ("t10k", 10000)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(
                int(size).to_bytes(4, "big") for size in array.shape
            )
            (target / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())


def prepare_root(root: Path) -> str:
    """An MNIST-layout data root under ``root``; returns what the data is."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data_root = Path(os.environ.get("TRAINLAB_DATA", "~/.cache/trainlab/data")).expanduser()
    for source, description in (
        (data_root / "MNIST" / "raw", "real MNIST"),
        (Path("/usr/share/datasets/fashion-mnist"), "real Fashion-MNIST (system copy)"),
    ):
        if all((source / n).is_file() or (source / f"{n}.gz").is_file() for n in IDX_FILES):
            _copy_idx(source, raw)
            return description
    _generate_idx(raw)
    return "generated images of MNIST's shape"


def _model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)).to(
        device
    )


def classic(root: Path, device: torch.device) -> float:
    dataset = torchvision.datasets.MNIST(
        root,
        train=True,
        transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
        ),
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)
    model = _model(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def minimal(root: Path, device: torch.device) -> float:
    dataset = torchvision.datasets.MNIST(root, train=True)
    images = ((dataset.data.float() / 255 - MEAN) / STD).unsqueeze(1).to(device)
    labels = dataset.targets.to(device)
    model = _model(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for indices in torch.randperm(len(labels), device=device).split(64):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images[indices]), labels[indices])
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def trainlab_run(root: Path, device: torch.device, run_dir: Path) -> tuple[float, float]:
    """(training epoch seconds, whole command seconds) of the equivalent trainlab run."""
    command = [
        sys.executable, "-m", "trainlab", "dataset=mnist", f"dataset.root={root}",
        "dataset.download=false", "dataset.val_size=1", "model=mlp", "model.hidden_sizes=[128]",
        "optimizer=adam", "optimizer.lr=1e-3", "batch_size=64", "epochs=1", f"device={device}",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    whole = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return metrics["epoch_seconds"][0], whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="trainlab-bench-") as folder:
        root = Path(folder)
        data = prepare_root(root)
        print(
            f"data: {data}; device {device}; torch threads {torch.get_num_threads()}; best of {args.repeats}"
        )
        trainlab_run(root, device, root / "warm-up")  # decodes once and fills the cache
        a = min(classic(root, device) for _ in range(args.repeats))
        b = min(minimal(root, device) for _ in range(args.repeats))
        runs = [trainlab_run(root, device, root / f"run{i}") for i in range(args.repeats)]
        c, c_whole = min(r[0] for r in runs), min(r[1] for r in runs)
    print(f"(a) classic DataLoader recipe     {a:7.2f} s/epoch")
    print(f"(b) minimal in-memory loop        {b:7.2f} s/epoch")
    print(
        f"(c) trainlab, training epoch      {c:7.2f} s/epoch   {a / c:5.1f}x faster than (a), {c / b - 1:+.1%} vs (b)"
    )
    print(
        f"(c) trainlab, whole command       {c_whole:7.2f} s      (start-up, data, evaluation included)"
    )


if __name__ == "__main__":
    main()
