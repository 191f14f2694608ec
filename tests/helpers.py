"""Test helpers: compose the real config in-process, and run the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import trainlab.cli  # noqa: F401  (registers the config resolvers)
from trainlab.cli import CONFIG_DIR

REPO = Path(__file__).resolve().parent.parent


def compose_config(*overrides: str) -> DictConfig:
    """The config ``trainlab <overrides>`` would run with."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def member_metrics(sweep: Path) -> dict[str, dict]:
    """metrics.json of every run below ``sweep``, by folder name."""
    return {
        path.parent.name: json.loads(path.read_text())
        for path in sorted(sweep.rglob("metrics.json"))
    }


ENV = {**os.environ, "HYDRA_FULL_ERROR": "0", "COLUMNS": "200"}


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m trainlab ARGS`` (the console script's code) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "trainlab", *args],
        cwd=cwd,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    """Start ``python -m trainlab ARGS`` without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "trainlab", *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Overrides that make a run take well under a second.
TINY = ("dataset.train_size=256", "dataset.val_size=128", "dataset.test_size=128", "epochs=3")
