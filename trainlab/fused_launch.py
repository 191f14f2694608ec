"""hydra/launcher=fused: Hydra's launch of a sweep, with the members that can share a stack of
weights trained together in this process (trainlab.fused_run), and the rest one after another
as Hydra's basic launcher runs them.

Each member is still a Hydra job of its own: its config is composed as the basic launcher
composes it, its folder is ``hydra.sweep.dir/hydra.sweep.subdir``, Hydra's callbacks see its
end, and its log lines go to its own ``trainlab.log``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from trainlab import runlog
from trainlab.fused_groups import Grouping, group_members
from trainlab.runlog import RunLogHandler

log = logging.getLogger("trainlab")


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], first: int) -> list[JobReturn]:
    """Run the sweep's members: groups first, then the members that run alone."""
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    configs = [
        _member_config(launcher, overrides, first + i) for i, overrides in enumerate(job_overrides)
    ]
    grouping = plan(configs, launcher.config)
    log.info("hydra/launcher=fused: %s", grouping.describe())
    returns: dict[int, JobReturn] = {}
    for group in grouping.groups:
        returns.update(_run_group(launcher, {index: configs[index] for index in group}))
    for index in sorted(set(range(len(configs))) - set(returns)):
        returns[index] = run_job(
            hydra_context=launcher.hydra_context, task_function=launcher.task_function,
            config=configs[index], job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )  # fmt: skip
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return [returns[index] for index in range(len(configs))]


def plan(configs: Sequence[DictConfig], base: DictConfig) -> Grouping:
    """The groups; finished members are left to the basic path, which skips them."""
    from trainlab.run_folder import preview

    tasks = [_task(config) for config in configs]
    done = [
        index
        for index, (config, task) in enumerate(zip(configs, tasks, strict=True))
        if preview(task, _output_dir(config), list(config.hydra.overrides.task)) == "done"
    ]
    resolved = [OmegaConf.to_container(task, resolve=True) for task in tasks]
    return group_members(resolved, int(base.fused.max_members), done)


def _member_config(launcher: Any, overrides: Sequence[str], index: int) -> DictConfig:
    """The member's config as Hydra's basic launcher composes it."""
    config = launcher.hydra_context.config_loader.load_sweep_config(
        launcher.config, list(overrides)
    )
    with open_dict(config):
        config.hydra.job.id = index
        config.hydra.job.num = index
    return config


def _output_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def _task(config: DictConfig) -> DictConfig:
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _run_group(launcher: Any, configs: dict[int, DictConfig]) -> dict[int, JobReturn]:
    """One group, in this process, as Hydra jobs that all end together."""
    from trainlab import cli
    from trainlab.distributed import Processes
    from trainlab.fused_run import Member, run_group
    from trainlab.interrupts import GracefulStop

    members, returns = [], {}
    for config in configs.values():
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(_output_dir(config))
    with GracefulStop() as stop, _member_logs(configs) as log_to:
        for config in configs.values():
            HydraConfig.instance().set_config(config)
            members.append(Member(_task(config), cli._job(Processes(), stop)))
        run_group(members, log_to)
        for (index, config), member in zip(configs.items(), members, strict=True):
            with log_to(member):
                returns[index] = _job_return(launcher, config, member)
    _say_interrupted(members, stop)
    return returns


def _job_return(launcher: Any, config: DictConfig, member: Any) -> JobReturn:
    """What Hydra's run_job would return for the member (one that failed says so as a run
    does: its line, and the sweep goes on); its callbacks are told it ended."""
    from trainlab import cli

    ret = JobReturn()
    ret.cfg, ret.hydra_cfg = member.config, config
    ret.overrides = list(config.hydra.overrides.task)
    ret.working_dir = os.getcwd()
    outcome = member.outcome
    if isinstance(outcome, BaseException):
        ret.return_value = cli._ended_early(outcome, member.job)  # or the exit it decides
    elif outcome.get("status") != "interrupted":
        ret.return_value = cli.objective(outcome)
    ret.status = JobStatus.COMPLETED
    launcher.hydra_context.callbacks.on_job_end(config=config, job_return=ret)
    return ret


def _say_interrupted(members: list[Any], stop: Any) -> None:
    """Stopped by a signal: every member has checkpointed; the sweep ends here, as it would."""
    from trainlab.failures import EXIT_INTERRUPTED

    if not stop():
        return
    print(
        f"trainlab: interrupted by {stop.signal_name}: the group's {len(members)} members "
        f"checkpointed; {members[0].job.how_to_resume}",
        file=sys.stderr,
    )
    raise SystemExit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def _member_logs(configs: dict[int, DictConfig]) -> Iterator[Any]:
    """Each member's log lines to its own trainlab.log (held until it starts, as a run's are);
    yields the context that routes the records logged inside it to one member."""
    first = next(iter(configs.values()))
    HydraConfig.instance().set_config(first)
    configure_log(first.hydra.job_logging, first.hydra.verbose)  # the console, as a job's
    runlog.drop()  # the file handler it made is the first member's; each gets its own below
    formatter = next((h.formatter for h in logging.getLogger().handlers if h.formatter), None)
    current: list[Path | None] = [None]
    handlers = []
    for config in configs.values():
        folder = Path(os.path.abspath(_output_dir(config)))
        handler = RunLogHandler(str(folder / f"{config.hydra.job.name}.log"))
        handler.setFormatter(formatter)
        handler.addFilter(lambda record, folder=folder: current[0] == folder)
        logging.getLogger().addHandler(handler)
        handlers.append(handler)

    @contextlib.contextmanager
    def log_to(member: Any) -> Iterator[None]:
        current[0] = Path(member.job.run_dir)
        try:
            yield
        finally:
            current[0] = None

    try:
        yield log_to
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
