"""How long a 16-member learning-rate sweep takes next to one member, through the real CLI.

The seed MLP on MNIST-shaped data (Fashion-MNIST: Debian's dataset-fashion-mnist copy, or
$TRAINLAB_DATA), 16 learning rates from 1e-4 to 1e-1, timed three ways on this machine:

  one member     trainlab dataset=fashion_mnist model=mlp optimizer.lr=1e-3 ...
  sequential     trainlab -m ... optimizer.lr=<16 values>        (one member after another)
  shared         trainlab -m hydra/launcher=gpus members_per_gpu=16 ...  (all 16 on the GPU)

Each time is the whole command, start-up included, as a user waits for it. The goal for the
shared sweep is at most 4x one member. Without a GPU the gpus launcher runs one member at a
time, so "shared" is only meaningful on a GPU machine.

    python scripts/bench_gpu_sweep.py [--epochs 3] [--members 16] [--members-per-gpu 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "trainlab", *args], cwd=cwd, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: trainlab {' '.join(args)}\n{result.stderr[-2000:]}")
    return seconds


def statuses(folder: Path) -> list[str]:
    return [json.loads(p.read_text())["status"] for p in sorted(folder.rglob("metrics.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--members-per-gpu", type=int, default=16)
    parser.add_argument("--train-size", type=int, default=None, help="fewer images, for a try")
    options = parser.parse_args()

    rates = ",".join(f"{lr:.3g}" for lr in np.logspace(-4, -1, options.members))
    common = [
        "dataset=fashion_mnist", "model=mlp", f"epochs={options.epochs}",
        "early_stopping.enabled=false", "checkpoint.enabled=false",
    ]  # fmt: skip
    if options.train_size:
        common.append(f"dataset.train_size={options.train_size}")
    gpus = torch.cuda.device_count()
    print(f"device: {torch.cuda.get_device_name(0) if gpus else 'CPU only'}; {options.members} "
          f"members, {options.epochs} epochs each; learning rates {rates}")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        timed([*common, f"hydra.run.dir={root / 'warm-up'}"], root)  # decodes and caches data
        one = timed([*common, "optimizer.lr=1e-3", f"hydra.run.dir={root / 'one'}"], root)
        sequential = timed(
            ["-m", *common, f"optimizer.lr={rates}", f"hydra.sweep.dir={root / 'seq'}"], root
        )
        shared = timed(
            [
                "-m", "hydra/launcher=gpus", f"members_per_gpu={options.members_per_gpu}",
                *common, f"optimizer.lr={rates}", f"hydra.sweep.dir={root / 'shared'}",
            ],
            root,
        )  # fmt: skip
        for name in ("seq", "shared"):
            done = statuses(root / name)
            if len(done) != options.members or set(done) != {"completed"}:
                sys.exit(f"{name}: expected {options.members} completed members, got {done}")
    print(f"one member:       {one:7.1f} s")
    print(f"sequential sweep: {sequential:7.1f} s  ({sequential / one:.1f}x one member)")
    note = "" if gpus else "  (no GPU: the gpus launcher ran one member at a time)"
    print(f"shared sweep:     {shared:7.1f} s  ({shared / one:.1f}x one member; goal <= 4x){note}")


if __name__ == "__main__":
    main()
