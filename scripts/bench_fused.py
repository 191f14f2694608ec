"""What hydra/launcher=fused saves: a sweep's members trained together against the same members
one after another and against one member alone, all in this process (start-up aside).

Sweeps: a 16-member learning-rate sweep (1e-4 to 1e-1, log-spaced) and a 3-loss x 8-lr sweep
(cross_entropy, hinge, log_loss), on the default synthetic MLP (20 epochs) and on the
Fashion-MNIST MLP (Debian's dataset-fashion-mnist copy, or $TRAINLAB_DATA; --fmnist-epochs).
Each time is a whole run of the members: training, validation every epoch, checkpoints and
test. "drift" is the largest relative difference in final validation loss between a member
trained together and the same member alone, and how many ended differently (status or
epochs): rounding differs between the two (batched matrix products), and training amplifies
it; --drift-reference shows how far one member alone moves when one of its initial weights is
changed by one float step. ``--data fashion_mnist --sweeps cnn --fmnist-epochs 1`` trains two
cnn members stacked anyway (the launcher runs cnn members alone) to show their drift.

    python scripts/bench_fused.py [--data synthetic,fashion_mnist] [--sweeps lr,loss_lr]
                                  [--device auto|cpu|cuda] [--fmnist-epochs 2] [--no-sequential]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LOSSES = ("cross_entropy", "hinge", "log_loss")
DATA = {
    "synthetic": [],
    "fashion_mnist": ["dataset=fashion_mnist", "dataset.download=false", "model=mlp"],
}


def members(sweep: str) -> list[list[str]]:
    if sweep == "cnn":  # why cnn members run alone: stacked, they drift (Fashion-MNIST only)
        cnn = ["model=cnn", "model.batch_norm=false", "dataset.train_size=1024"]
        return [[*cnn, "optimizer.lr=1e-3"], [*cnn, "optimizer.lr=1e-2"]]
    if sweep == "lr":
        return [[f"optimizer.lr={lr:.3g}"] for lr in np.logspace(-4, -1, 16)]
    rates = np.logspace(-4, -1, 8)
    return [[f"loss={loss}", f"optimizer.lr={lr:.3g}"] for loss in LOSSES for lr in rates]


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from trainlab.preflight import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def job(run_dir: Path) -> Any:
    from rich.console import Console

    from trainlab.job import Job

    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    return Job(run_dir=run_dir, multirun=True, console=quiet)


def alone(configs: list[Any], folder: Path) -> tuple[float, list[dict]]:
    from trainlab.train import run

    start, results = time.perf_counter(), []
    for index, config in enumerate(configs):
        results.append(run(config, job(folder / f"alone{index}")))
    return time.perf_counter() - start, results


def together(configs: list[Any], folder: Path) -> tuple[float, list[dict]]:
    from trainlab.fused_run import Member, run_group

    group = [Member(c, job(folder / f"fused{i}")) for i, c in enumerate(configs)]
    start = time.perf_counter()
    run_group(group)
    seconds = time.perf_counter() - start
    failed = [m.outcome for m in group if isinstance(m.outcome, BaseException)]
    if failed:
        raise failed[0]
    return seconds, [m.outcome for m in group]


def drift(fused: list[dict], single: list[dict]) -> tuple[float, int]:
    """The largest relative difference in final val loss, and how many ended differently."""
    worst, differ = 0.0, 0
    for one, other in zip(fused, single, strict=True):
        if (one["status"], one["epochs_run"]) != (other["status"], other["epochs_run"]):
            differ += 1
        a, b = (m["val"]["loss"] if m.get("val") else float("nan") for m in (one, other))
        if np.isfinite(a) and np.isfinite(b):
            worst = max(worst, abs(a - b) / abs(b))
    return worst, differ


def nudged_first_weight() -> None:
    """Change one initial weight of every model built from now on by one float step."""
    import torch

    import trainlab.experiment as experiment

    build = experiment._build_network

    def nudged(config: Any, spec: Any) -> Any:
        network = build(config, spec)
        with torch.no_grad():
            weight = next(network.parameters())
            weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(np.inf))
        return network

    experiment._build_network = nudged


def bench(data: str, sweep: str, options: argparse.Namespace, folder: Path) -> None:
    common = [*DATA[data], f"device={options.device}"]
    if data == "fashion_mnist":
        common.append(f"epochs={options.fmnist_epochs}")
    configs = [compose([*common, *member]) for member in members(sweep)]
    middle = len(configs) // 2
    one, _ = alone([configs[middle]], folder / f"{data}-{sweep}-one")
    fused, fused_results = together(configs, folder / f"{data}-{sweep}")
    line = (
        f"{data:13s} {sweep:7s} {len(configs):2d} members | one {one:6.1f} s | "
        f"fused {fused:6.1f} s ({fused / one:4.1f}x one)"
    )
    if options.sequential:
        sequential, single = alone(configs, folder / f"{data}-{sweep}")
        worst, differ = drift(fused_results, single)
        line += (
            f" | sequential {sequential:6.1f} s ({sequential / one:4.1f}x one, "
            f"{sequential / fused:4.1f}x fused) | drift {worst:.1e}, {differ} ended differently"
        )
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic,fashion_mnist")
    parser.add_argument("--sweeps", default="lr,loss_lr")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fmnist-epochs", type=int, default=2)
    parser.add_argument("--no-sequential", dest="sequential", action="store_false")
    parser.add_argument("--drift-reference", action="store_true")
    options = parser.parse_args()

    import torch

    from trainlab.experiment import resolve_device

    device = resolve_device(options.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        alone([compose(["epochs=1", "dataset.train_size=256"])], folder / "warm-up")
        for data in options.data.split(","):
            for sweep in options.sweeps.split(","):
                bench(data, sweep, options, folder)
        if options.drift_reference:
            configs = [compose(member) for member in members("lr")]
            _, single = alone(configs, folder / "reference")
            nudged_first_weight()
            _, moved = alone(configs, folder / "nudged")
            worst, differ = drift(moved, single)
            print(f"one member alone, one initial weight one float step away: drift {worst:.1e}, "
                  f"{differ} of 16 ended differently")  # fmt: skip


if __name__ == "__main__":
    main()
