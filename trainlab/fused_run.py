"""A group of sweep members trained together, top to bottom: read :func:`run_group` first.

Each member is a run of its own in its own folder, through trainlab.train's own steps (claim,
plan, set up, start, resume, loggers; then results and finish); only the fit in the middle is
shared (trainlab.fused_engine). A member that fails as it sets up fails alone; one that
finished before is skipped. One process, so no data-parallel team.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainlab.data import Dataset
from trainlab.distributed import Processes, Team
from trainlab.engine import FitResult, FitState
from trainlab.experiment import Experiment
from trainlab.fused_engine import GroupFit, MemberLoop, PenaltyTerms, StackedModels
from trainlab.job import Job
from trainlab.regularizers import penalty_terms
from trainlab.run_folder import claimed
from trainlab.train import (
    Loggers,
    Setup,
    checkpoint_saver,
    evaluate_split,
    fit_settings,
    load_data,
    results,
    resume_state,
    set_up,
    start,
)

log = logging.getLogger("trainlab")


@dataclass
class Member:
    """One member of the group: its config and job, then what setting it up built."""

    config: DictConfig
    job: Job
    outcome: dict[str, Any] | BaseException | None = None  # metrics.json, or what ended it
    setup: Setup | None = None
    folder: Any = None
    loggers: Loggers | None = None
    state: FitState | None = None
    folder_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    loggers_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


def run_group(members: Sequence[Member], log_to: Any = None) -> None:
    """Run every member; each one's ``outcome`` is its metrics.json or the error that ended it
    (``log_to(member)``: a context in which log records are that member's)."""
    team, clock = Team(Processes()), time.perf_counter()
    log_to, data = log_to or _no_routing, _SharedData()
    for member in members:  # 1-5. each as a run of its own (one copy of the data for all)
        with log_to(member):
            _prepare(member, team, data)
    parts = _by_start([m for m in members if m.outcome is None])
    for number, part in enumerate(parts):
        try:
            fitted = _train_together(part, team)  # 6. trained together (members resumed alike)
        except BaseException as error:  # a failure of the shared fit ends the members left
            for member in (member for later in parts[number:] for member in later):
                with log_to(member):
                    _end(member, error)
            return
        for member, result in zip(part, fitted, strict=True):  # 7-8. each one's outcome
            member.outcome = result
            with log_to(member):
                _finish(member, team, clock)


@contextlib.contextmanager
def _no_routing(member: Member) -> Iterator[None]:
    yield


class _SharedData:
    """Loads a dataset onto its device once for the members that use it."""

    def __init__(self) -> None:
        self.loaded: dict[str, Dataset] = {}

    def __call__(self, experiment: Experiment) -> Dataset:
        config = OmegaConf.to_container(experiment.config.dataset, resolve=True)
        key = json.dumps([config, str(experiment.device), experiment.channels_last], default=str)
        if key not in self.loaded:
            self.loaded[key] = load_data(experiment)
        return self.loaded[key]


def _prepare(member: Member, team: Team, data: _SharedData) -> None:
    """trainlab.train.run's steps 1-5 for one member; a failure ends this member only."""
    job = member.job
    try:
        folder = member.folder_stack.enter_context(claimed(job.run_dir, job.multirun, team))
        plan = folder.plan(member.config, job.overrides, job.multirun)
        if plan.done:  # finished before
            log.info("%s already finished (%s): skipped", job.run_dir, plan.previous["status"])
            member.outcome = plan.previous
            member.folder_stack.close()
            return
        member.setup = set_up(plan, job, team, data)
        start(folder, member.setup, member.setup.data.spec, job)
        member.state = resume_state(member.setup, job, team)
        member.folder = folder
        member.loggers = member.loggers_stack.enter_context(
            Loggers(member.setup, plan, job, team, member.state)
        )
    except BaseException as error:
        _end(member, error)


def _end(member: Member, error: BaseException) -> None:
    """The member ends with ``error``: its loggers close and its folder records the failure."""
    for stack in (member.loggers_stack, member.folder_stack):
        try:
            stack.__exit__(type(error), error, error.__traceback__)
        except BaseException as raised:
            if raised is not error:
                raise
    member.outcome = error


def _by_start(members: list[Member]) -> list[list[Member]]:
    """Members that resume from the same step train together (a sweep killed while its members
    were writing their checkpoints has some one epoch behind)."""
    parts: dict[int, list[Member]] = {}
    for member in members:
        parts.setdefault(member.state.step if member.state else 0, []).append(member)
    return list(parts.values())


def _train_together(members: list[Member], team: Team) -> list[FitResult]:
    """The shared fit: each member's engine loop, one stack of weights (step 6)."""
    loops, setups = [], [m.setup for m in members]
    for member, setup in zip(members, setups, strict=True):
        training, model = setup.training, setup.experiment.model
        loops.append(MemberLoop(
            model, setup.experiment.loss_fn, training.optimizer, training.schedule, None,
            setup.loader, len(setup.loader),
            lambda setup=setup, model=model: evaluate_split(setup, model, "val", team),
            fit_settings(setup), member.loggers.callbacks, member.state or FitState(),
            checkpoint_saver(setup, member.folder, member.loggers, team), member.job.stop_requested,
            None,
        ))  # fmt: skip
    stacked = StackedModels(
        [s.experiment.model for s in setups],
        [json.dumps(OmegaConf.to_container(s.config.loss, resolve=True)) for s in setups],
        [s.experiment.loss_fn for s in setups],
        [PenaltyTerms(*penalty_terms(s.config.regularizer)) for s in setups],
        [s.experiment.optimizer_choice.clip_grad_norm for s in setups],
        [s.training.optimizer for s in setups],
    )
    if len(members) > 1:
        log.info("training %d members together", len(members))
    seconds = setups[0].settings.fused["checkpoint_seconds"]
    return GroupFit(loops, stacked, seconds).run()


def _finish(member: Member, team: Team, clock: float) -> None:
    """trainlab.train.run's steps 7-8 for one member."""
    setup, loggers, result = member.setup, member.loggers, member.outcome
    try:
        metrics = results(
            setup, setup.experiment.model, result, member.folder.provenance, member.job, team,
            clock,
        )  # fmt: skip
        loggers.write_final(metrics)
        member.loggers_stack.close()
        metrics = member.folder.finish(metrics)
        loggers.summary(metrics, member.job)
        member.folder_stack.close()
        member.outcome = metrics
    except BaseException as error:
        _end(member, error)
