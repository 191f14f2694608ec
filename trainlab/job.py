"""Where a run executes: its folder, the command line that asked for it, its processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from trainlab.config_keys import shell_override
from trainlab.distributed import Processes


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Job:
    """What a run needs to know beyond its config (trainlab.cli builds it from Hydra's)."""

    run_dir: Path
    multirun: bool = False
    overrides: list[str] = field(default_factory=list)  # the command line's config overrides
    hydra_config: Any = None  # written to .hydra/hydra.yaml (None: an empty record)
    title: str = "trainlab"  # the console's name for the run (a sweep member's overrides)
    command: list[str] = field(default_factory=list)  # recorded in provenance.json
    resume_hint: str = ""  # how to continue the run if it is stopped
    processes: Processes = field(default_factory=Processes)
    stop_requested: Callable[[], bool] = _never  # polled after every step (a signal came)
    console: Console | None = None  # None: the terminal

    @property
    def how_to_resume(self) -> str:
        return (
            self.resume_hint
            or f"continue it with: trainlab {shell_override('resume', self.run_dir)}"
        )
