"""Sweeps: every member checked before any runs, and one table comparing them at the end.

Before a basic sweep starts, :func:`preflight` composes and checks every member's config,
refuses the sweep if any is invalid (listing each with the reason), and says what a re-run
into the same folder will do (``12 runs: 9 done, 2 resume, 1 rerun``).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from rich.table import Table

from trainlab.errors import UserError, first_line
from trainlab.loggers import make_console
from trainlab.preflight import Compose, explain
from trainlab.report import Run, find_runs
from trainlab.resume import plan_run
from trainlab.run import build_experiment, check_data_parallel


def summary_table(runs: list[Run], title: str) -> Table:
    """Members as rows: status, epochs, validation loss and the test numbers."""
    metric_names: list[str] = []
    for run in runs:
        for name in run.metrics.get("metric_names", []):
            if name not in metric_names:
                metric_names.append(name)
    table = Table(title=title)
    table.add_column("run", overflow="fold")
    table.add_column("status")
    table.add_column("epochs", justify="right")
    table.add_column("val loss", justify="right")
    for name in metric_names:
        table.add_column(f"test {name}", justify="right")
    for run in runs:
        val = run.metrics.get("val") or {}
        test = run.metrics.get("test") or {}
        table.add_row(
            run.name,
            run.status,
            str(run.metrics.get("epochs_run", "-")),
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
        runs = find_runs(sweep_dir, self.member_dirs or None)
        console = make_console()
        console.print(summary_table(runs, f"sweep {sweep_dir}"))
        failed = [run.name for run in runs if run.status == "failed"]
        if failed:
            console.print(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}")
            raise SystemExit(1)


def task_config(config: DictConfig) -> DictConfig:
    """A composed config as the task function sees it: without the hydra node."""
    return OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])


def check_members(members: Sequence[list[str]], compose: Compose) -> tuple[Counter, list[str]]:
    """Compose and check every member; return what each will do and the invalid ones."""
    actions: Counter = Counter()
    problems: list[str] = []
    folders: dict[Path, str] = {}
    for index, overrides in enumerate(members):
        name = ",".join(o for o in overrides if not o.startswith("hydra.")) or f"run{index}"
        try:
            member = compose(list(overrides))
        except Exception as error:  # Hydra composition: unknown option or key, bad syntax
            problems.append(f"{name}: {explain(error, list(overrides), compose)}")
            continue
        try:
            with read_write(member), open_dict(member):
                member.hydra.job.num = index
            run_dir = Path(member.hydra.sweep.dir) / str(member.hydra.sweep.subdir)
            if run_dir in folders:
                raise UserError(
                    f"it would share its folder {run_dir} with {folders[run_dir]}; keep "
                    "${hydra.job.override_dirname} or ${hydra.job.num} in hydra.sweep.subdir"
                )
            folders[run_dir] = name
            task = task_config(member)
            build_experiment(task)
            world = member_processes(member.hydra.launcher)
            if world > 1:
                check_data_parallel(task, world)
            action, _ = plan_run(task, run_dir, list(overrides), multirun=True)
            actions[action] += 1
        except UserError as error:
            problems.append(f"{name}: {error}")
        except Exception as error:  # an OmegaConf or torch error the checks did not foresee
            first = first_line(error)
            problems.append(f"{name}: {type(error).__name__}: {first}")
    return actions, problems


def member_processes(launcher: DictConfig) -> int:
    """How many processes train each member: a submitit launcher starts nodes x tasks_per_node
    tasks per job (hydra/launcher=slurm: one per GPU), which train one run together."""
    if "tasks_per_node" not in launcher:  # a launcher that runs each member in one process
        return 1
    tasks, nodes = launcher.tasks_per_node, launcher.get("nodes", 1)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (tasks, nodes)):
        raise UserError(
            f"hydra.launcher.tasks_per_node={tasks} and hydra.launcher.nodes={nodes} must be "
            "whole numbers of at least 1 (on nodes without GPUs: "
            "hydra.launcher.gpus_per_node=null hydra.launcher.tasks_per_node=1)"
        )
    return tasks * nodes


def describe_actions(actions: Counter) -> str:
    total = sum(actions.values())
    parts = [f"{actions[a]} {a}" for a in ("done", "resume", "rerun", "new") if actions[a]]
    return f"{total} run{'' if total == 1 else 's'}: {', '.join(parts)}"


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_members(config: DictConfig, overrides: list[str]) -> list[list[str]] | None:
    """Each member's overrides, as Hydra's basic sweeper will expand them (its
    ``hydra.sweeper.params`` first); None for other sweepers (Optuna picks members as it goes).
    """
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *overrides])
    return [
        list(member) for batch in BasicSweeper.split_arguments(parsed, None) for member in batch
    ]


def preflight(members: Sequence[list[str]], compose: Compose) -> str | None:
    """Check every member before any runs: print the plan, or the invalid members and a line."""
    if not members:
        return "the sweep has no members (an empty range or list?); give each swept key a value"
    actions, problems = check_members(members, compose)
    if problems:
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return (
            f"{len(problems)} of {len(members)} sweep members are invalid (listed above); "
            "nothing was run. Fix them and run the sweep again"
        )
    print(f"trainlab: {describe_actions(actions)}", flush=True)
    return None
