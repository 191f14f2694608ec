"""How much the generic engine costs per step next to a minimal hand-written loop.

Both train the same MLP with the same optimizer, batch size and data, already in memory; the
engine run includes everything trainlab does per step (closure, penalty hook, schedule,
progress counter, logging every ``log_every_steps``). Prints steps per second for each.

    python scripts/bench_engine.py [--epochs 5] [--batch-size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from trainlab.data import InMemoryLoader, load_dataset
from trainlab.engine import FitSettings, fit
from trainlab.losses import build_loss
from trainlab.models import build_model
from trainlab.optim import TrainingPlan, build_schedule

DATASET = {
    "name": "synthetic",
    "task": "classification",
    "seed": 0,
    "train_size": 20000,
    "val_size": 1000,
    "test_size": 1000,
    "features": 8,
    "noise": 0.2,
    "classes": 3,
    "turns": 1.25,
    "outliers": 0.1,
    "outlier_scale": 5.0,
    "list_size": 20,
    "ndcg_k": 10,
}
MODEL = {"name": "mlp", "hidden_sizes": [64, 64], "activation": "relu", "dropout": 0.0}


def minimal_loop(data, epochs: int, batch_size: int) -> float:
    torch.manual_seed(0)
    model = build_model(MODEL, data.spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs, targets = data.train.inputs, data.train.targets
    start = time.perf_counter()
    for _ in range(epochs):
        for indices in torch.randperm(len(inputs)).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(inputs[indices]), targets[indices])
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def engine_loop(data, epochs: int, batch_size: int) -> float:
    torch.manual_seed(0)
    model = build_model(MODEL, data.spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = InMemoryLoader(data.train, batch_size, shuffle=True, seed=0)
    schedule = build_schedule({"name": "constant"}, optimizer, TrainingPlan(epochs, len(loader)))
    loss = build_loss({"name": "cross_entropy", "label_smoothing": 0.0}, data.spec)
    settings = FitSettings(epochs=epochs, log_every_steps=10)
    start = time.perf_counter()
    fit(
        model, loss, optimizer, schedule, None, loader, len(loader), lambda: {"loss": 0.0}, settings
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_dataset(DATASET)
    steps = args.epochs * -(-len(data.train) // args.batch_size)
    print(
        f"{steps} steps of MLP 8-64-64-3, Adam, batch {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    results = {}
    for name, loop in (("minimal loop", minimal_loop), ("trainlab engine", engine_loop)):
        best = min(loop(data, args.epochs, args.batch_size) for _ in range(args.repeats))
        results[name] = best
        print(f"{name:16s} {best:6.2f} s  {steps / best:8.0f} steps/s")
    overhead = results["trainlab engine"] / results["minimal loop"] - 1
    print(f"engine overhead: {overhead:+.1%} per step")


if __name__ == "__main__":
    main()
