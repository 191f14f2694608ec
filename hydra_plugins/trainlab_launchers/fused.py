"""hydra/launcher=fused's launcher: sweep members that share a model and data train together,
stacked, in this process (trainlab.fused_launch does the work; Hydra imports this module at
start-up, so it imports nothing heavy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.plugins.launcher import Launcher


class FusedLauncher(Launcher):
    def __init__(self) -> None:
        self.config: Any = None
        self.hydra_context: Any = None
        self.task_function: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from trainlab.fused_launch import launch

        return launch(self, job_overrides, initial_job_idx)
