"""A sweep's own life: one sweep at a time in its folder, and one table comparing its members
at the end. (Its members are checked before any runs by trainlab.preflight.)"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from trainlab.console import make_console
from trainlab.errors import UserError, path_error
from trainlab.files import FolderLocked, OutputError, lock_folder
from trainlab.hparams_view import write_view
from trainlab.report import Group, Run, default_metric, find_runs, rank
from trainlab.report_probes import is_probe, probe_table

LOCK_NAME = ".trainlab.lock"
EXIT_USER_ERROR = 2


def summary_table(runs: list[Run], title: str) -> Table:
    """Members ranked by the validation value of the task's primary metric (what selection may
    use; the test numbers are there to read, not to choose by), the best one marked."""
    metric = default_metric(runs)  # val_<primary metric>
    name = metric.partition("_")[2]
    ranked = [group.runs[0] for group in rank([Group((r.name,), [r]) for r in runs], metric)]
    table = Table(title=f"{title}, ranked by {metric}")
    table.add_column("#", justify="right")
    table.add_column("run", overflow="fold")
    table.add_column("status")
    table.add_column("epochs", justify="right")
    for column in dict.fromkeys(["val loss", f"val {name}", f"test {name}"]):
        table.add_column(column, justify="right")
    shown = list(dict.fromkeys(["val_loss", metric, f"test_{name}"]))
    for position, run in enumerate(ranked, 1):
        values = [run.value(column) for column in shown]
        best = position == 1 and values[1] is not None
        table.add_row(
            f"{position} best" if best else str(position),
            run.name,
            run.status,
            str(run.metrics.get("epochs_run", "-")),
            *("-" if value is None else f"{value:.4f}" for value in values),
            style="bold green" if best else None,
        )
    return table


def _write_hparams_view(sweep_dir: Path, console: Console) -> None:
    """TensorBoard's HParams columns for every run in the folder (earlier sweeps' too: the
    dashboard shows them all). The members' results are already safe: a failure is a note."""
    try:
        write_view(sweep_dir, [run.metrics for run in find_runs(sweep_dir)])
    except UserError as error:
        console.print(f"note: the HParams view was not written: {error}", soft_wrap=True)


def sweep_in_use(sweep_dir: Path) -> str | None:
    """Why a sweep cannot run in ``sweep_dir`` now (another sweep holds it), or None."""
    lock = sweep_dir / LOCK_NAME
    if not lock.exists():
        return None
    try:
        descriptor = lock_folder(lock)
    except FolderLocked:
        return _IN_USE.format(sweep_dir=sweep_dir)
    os.close(descriptor)
    return None


def _refuse(problem: str) -> NoReturn:
    print(f"trainlab: error: {problem}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR) from None


_IN_USE = (
    "{sweep_dir} is in use by another trainlab sweep right now; wait for it to end, or choose "
    "another hydra.sweep.dir"
)


class SweepSummary(Callback):
    """Hydra callback: hold the sweep folder while the sweep runs (a second sweep into it is
    refused at once); at the end print the members' table and exit 1 when one failed.

    Only this sweep's members count, not runs an earlier sweep left in the same folder.
    """

    def __init__(self) -> None:
        self.member_dirs: list[Path] = []
        self.lock: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        existed = sweep_dir.exists()
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            self.lock = lock_folder(sweep_dir / LOCK_NAME)
        except FolderLocked:
            _refuse(_IN_USE.format(sweep_dir=sweep_dir))
        except OutputError as error:  # a file system without locks
            if not existed:
                with contextlib.suppress(OSError):
                    sweep_dir.rmdir()
            _refuse(str(error))
        except OSError as error:  # a path that changed since the preflight looked
            problem = path_error(error)
            if problem is None:
                raise
            _refuse(str(problem))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self.member_dirs.append(Path(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        self._release(sweep_dir)
        # Launchers that run jobs in other processes never call on_job_end here: scan instead.
        found = find_runs(sweep_dir, self.member_dirs or None)
        console = make_console()
        probes = [run for run in found if is_probe(run)]
        runs = [run for run in found if not is_probe(run)]
        if probes:
            console.print(probe_table(probes, f"sweep {sweep_dir}"))
        if runs or not probes:
            console.print(summary_table(runs, f"sweep {sweep_dir}"))
        _write_hparams_view(sweep_dir, console)
        failed = [run.name for run in found if run.status == "failed"]
        if failed:
            console.print(f"{len(failed)} of {len(found)} runs failed: {', '.join(failed)}")
            raise SystemExit(1)

    def _release(self, sweep_dir: Path) -> None:
        if self.lock is None:
            return
        with contextlib.suppress(OSError):
            (sweep_dir / LOCK_NAME).unlink()
        os.close(self.lock)
        self.lock = None
