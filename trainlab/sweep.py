"""The end of a multirun: one table comparing every member, and a non-zero exit if any failed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from trainlab.loggers import make_console


def _natural_key(path: Path) -> list:
    """Sort ``batch_size=8`` before ``batch_size=32``: numbers compare as numbers."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", str(path))
    return [
        (0, float(part), "") if index % 2 else (1, 0.0, part) for index, part in enumerate(parts)
    ]


def read_runs(
    sweep_dir: Path, member_dirs: list[Path] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(member name, metrics.json content) for ``member_dirs`` (default: every run below
    ``sweep_dir``), in name order. A member without a readable metrics.json counts as failed."""
    if member_dirs is None:
        member_dirs = [path.parent for path in sweep_dir.rglob("metrics.json")]
    sweep_dir = sweep_dir.resolve()
    runs = []
    for run_dir in sorted((path.resolve() for path in member_dirs), key=_natural_key):
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError) as error:
            metrics = {"status": "failed", "error": f"no readable metrics.json ({error})"}
        name = (
            str(run_dir.relative_to(sweep_dir))
            if run_dir.is_relative_to(sweep_dir)
            else str(run_dir)
        )
        runs.append((name, metrics))
    return runs


def summary_table(runs: list[tuple[str, dict[str, Any]]], title: str) -> Table:
    """Members as rows: status, epochs, best validation loss and the test numbers."""
    metric_names: list[str] = []
    for _, metrics in runs:
        for name in metrics.get("metric_names", []):
            if name not in metric_names:
                metric_names.append(name)
    table = Table(title=title)
    table.add_column("run", overflow="fold")
    table.add_column("status")
    table.add_column("epochs", justify="right")
    table.add_column("val loss", justify="right")
    for name in metric_names:
        table.add_column(f"test {name}", justify="right")
    for run, metrics in runs:
        val = metrics.get("val") or {}
        test = metrics.get("test") or {}
        table.add_row(
            run,
            metrics.get("status", "?"),
            str(metrics.get("epochs_run", "-")),
            f"{val['loss']:.4f}" if "loss" in val else "-",
            *(f"{test[name]:.4f}" if name in test else "-" for name in metric_names),
        )
    return table


class SweepSummary(Callback):
    """Hydra callback: print the sweep's table; exit 1 when a member failed with an error.

    Only this sweep's members count, not runs an earlier sweep left in the same folder.
    """

    def __init__(self) -> None:
        self.member_dirs: list[Path] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self.member_dirs.append(Path(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # Launchers that run jobs in other processes never call on_job_end here: scan instead.
        runs = read_runs(sweep_dir, self.member_dirs or None)
        console = make_console()
        console.print(summary_table(runs, f"sweep {sweep_dir}"))
        failed = [name for name, metrics in runs if metrics.get("status") == "failed"]
        if failed:
            console.print(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}")
            raise SystemExit(1)
