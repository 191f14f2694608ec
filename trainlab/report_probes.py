"""Learning-rate probes (``mode=lr_find``) in trainlab-report and at the end of a sweep: a
table of their suggestions, never ranked among runs."""

from __future__ import annotations

import csv
from pathlib import Path

from rich.table import Table

from trainlab.report import Run, swept_keys

PROBE_CSV = "lr_find.csv"


def is_probe(run: Run) -> bool:
    return run.metrics.get("kind") == "lr_find"


def _label(run: Run, keys: list[str]) -> str:
    given = [f"{key}={run.overrides[key]}" for key in keys if key in run.overrides]
    return " ".join(given) or run.name


def probe_table(probes: list[Run], title: str) -> Table:
    """Per probe: what it varied, the suggested lr, and the command that trains with it."""
    keys = swept_keys(probes)
    table = Table(title=f"{title}: learning-rate range tests (mode=lr_find)")
    table.add_column("probe", overflow="fold")
    table.add_column("status")
    table.add_column("suggested lr", justify="right", no_wrap=True)
    table.add_column("train with", overflow="fold")
    for run in probes:
        lr = run.metrics.get("suggested_lr")
        table.add_row(
            _label(run, keys) if keys else run.name, run.status,
            "-" if lr is None else f"{lr:.3g}", run.metrics.get("command") or "-",
        )  # fmt: skip
    return table


def write_probe_csv(path: Path, probes: list[Run]) -> None:
    keys = swept_keys(probes)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["probe", *keys, "status", "suggested_lr", "rule", "command"])
        for run in probes:
            metrics = run.metrics
            writer.writerow(
                [run.name, *(run.overrides.get(key, "") for key in keys), run.status,
                 metrics.get("suggested_lr", ""), metrics.get("rule", ""),
                 metrics.get("command", "")]
            )  # fmt: skip
