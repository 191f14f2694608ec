"""The ``trainlab`` command: Hydra composes the config, trainlab validates and runs it.

A mistake the user can fix ends as one line on stderr and a non-zero exit; in a sweep the
failing member is recorded in its metrics.json and the other members still run.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from trainlab.errors import UserError
from trainlab.loggers import make_console
from trainlab.run import run, write_json

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C
log = logging.getLogger("trainlab")


def run_name(override_dirname: str, job_number: int) -> str:
    """A sweep member's folder name: its overrides (``loss=huber,optimizer.lr=0.01``)."""
    name = override_dirname.replace(os.sep, "_") or f"run{job_number}"
    return name if len(name) <= 200 else f"{name[:180]}...#{job_number}"


OmegaConf.register_new_resolver("trainlab_run_name", run_name, replace=True)


def _swept(config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The keys set on the command line with their typed values, so sweeps compare by them.

    A group override (``loss=huber``) gives the option's name.
    """
    swept: dict[str, Any] = {}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.") or "=" not in override:
            continue
        value = OmegaConf.select(config, key, default=None)
        if value is None:  # not a config key (+experiment=NAME selects a preset)
            continue
        if isinstance(value, DictConfig):
            value = value.get("name")
        elif isinstance(value, ListConfig):
            value = str(list(value))
        swept[key] = value
    return swept


def _record_end(run_dir: Path, log_name: str, status: str, message: str) -> None:
    """Mark a run that did not finish (failed, interrupted) in its metrics.json and log."""
    if run_dir.is_dir():
        write_json(run_dir / "metrics.json", {"status": status, "error": message})
        with open(run_dir / log_name, "a") as log_file:  # the console line goes to stderr only
            log_file.write(f"{status}: {message}\n")


def _interrupt(signal_number: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run the way Ctrl-C does


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _main(config: DictConfig) -> float | None:
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    multirun = hydra_config.mode == RunMode.MULTIRUN
    overrides = list(hydra_config.overrides.task)
    title = run_name(hydra_config.job.override_dirname, 0) if multirun else "trainlab"
    log_name = f"{hydra_config.job.name}.log"
    try:
        metrics = run(
            config,
            run_dir,
            swept=_swept(config, overrides),
            console=make_console(),
            title=title,
            command=list(sys.argv),
        )
    except KeyboardInterrupt:
        _record_end(run_dir, log_name, "interrupted", "stopped by Ctrl-C or SIGTERM")
        print(f"trainlab: interrupted; {run_dir} is marked interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None  # a sweep stops here too
    except UserError as error:
        _record_end(run_dir, log_name, "failed", str(error))
        print(f"trainlab: error: {error}", file=sys.stderr)
        if multirun:
            return None  # a search sweeper records a failed trial
        raise SystemExit(EXIT_USER_ERROR) from None
    except Exception as error:
        # A bug, not a user mistake: keep the traceback, but let the rest of a sweep go on.
        _record_end(run_dir, log_name, "failed", f"{type(error).__name__}: {error}")
        if not multirun:
            raise
        log.error("run failed:\n%s", traceback.format_exc())
        return None
    # What a search sweeper (Optuna) optimizes: the validation value, never the test one. A
    # diverged run is a failed trial (None; Optuna's sweeper chokes on NaN), whatever its best
    # weights scored.
    value = (metrics.get("val") or {}).get(metrics["primary_metric"])
    return value if metrics["status"] in ("completed", "early_stopped") else None


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _interrupt)
    _main()


if __name__ == "__main__":
    main()
