"""What a checkpoint costs: its size and the time to write it (serialize, fsync, rename).

Builds each model with Adam state (one step taken), as a run's checkpoint holds it, and writes
it with trainlab's own save_checkpoint into a temporary folder. Prints size and milliseconds.

    python scripts/bench_checkpoint.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from trainlab.checkpoint import rng_states, save_checkpoint
from trainlab.cli import CONFIG_DIR
from trainlab.data import describe_dataset
from trainlab.models import build_model

MODELS = {
    "mlp (synthetic)": ["model=mlp"],
    "cnn (fashion_mnist)": ["model=cnn", "dataset=fashion_mnist"],
    "resnet (cifar10)": ["model=resnet", "dataset=cifar10"],
}


def parts_for(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose(config_name="config", overrides=overrides)
    model = build_model(config.model, describe_dataset(config.dataset))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(2, *describe_dataset(config.dataset).input_shape)).sum().backward()
    optimizer.step()
    return {
        "config": {},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": {},
        "loader": {},
        "engine": {"best_state": {k: v.clone() for k, v in model.state_dict().items()}},
        "rng": rng_states(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        for name, overrides in MODELS.items():
            parts = parts_for(overrides)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                save_checkpoint(path, parts)
                times.append(time.perf_counter() - start)
            size = path.stat().st_size / 2**20
            print(
                f"{name:22s} {size:7.2f} MiB  {1000 * statistics.median(times):8.1f} ms per write"
            )


if __name__ == "__main__":
    main()
