"""One run, top to bottom: read :func:`run` first; every step is a line of it, and the
functions below follow in the order it calls them.

Two rules show as named steps rather than branches. Process 0 owns the run folder: on the other
processes of a data-parallel run ``folder`` is a stand-in whose writes are nothing. And
``team.agree`` / ``team.share`` mark the phases every process must pass before any goes on, so
a failure on one ends all of them (see trainlab.distributed).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab.checkpoint import load_checkpoint
from trainlab.config_keys import override_key, shell_override
from trainlab.console import make_console
from trainlab.data import Dataset, InMemoryLoader, load_dataset
from trainlab.distributed import Team, reduce_sum
from trainlab.engine import FitResult, FitSettings, FitState, fit
from trainlab.errors import UserError
from trainlab.experiment import (
    Experiment,
    Training,
    build_experiment,
    check_parallel,
    describe_plan,
)
from trainlab.job import Job
from trainlab.loggers import ConsoleLogger, NullLogger, TensorBoardLogger, hparams_of
from trainlab.lr_find import plot, probe, read_probe_settings
from trainlab.metric_names import PRIMARY_METRIC
from trainlab.metrics import evaluate, metric_names
from trainlab.project_dirs import as_typed
from trainlab.resume import check_resumable, checkpoint_parts, restore
from trainlab.run_folder import CHECKPOINT_NAME, PROBE_PLOT_NAME, Plan, claimed, now

log = logging.getLogger("trainlab")


def run(config: DictConfig, job: Job) -> dict[str, Any]:
    """Run ``config`` in ``job.run_dir``; return what its metrics.json holds."""
    team, clock = Team(job.processes), time.perf_counter()
    with claimed(job.run_dir, job.multirun, team) as folder:  # 1. lock it (process 0)
        plan = team.share(lambda: folder.plan(config, job.overrides, job.multirun))  # 2. decide
        if plan.done:  # a sweep member that finished before
            log.info("%s already finished (%s): skipped", job.run_dir, plan.previous["status"])
            return plan.previous
        setup = team.agree(lambda: set_up(plan, job, team))  # 3. build, checkpoint, data
        first = team.from_main(setup.data.spec)  # every process must hold the same data
        team.agree(lambda: start(folder, setup, first, job))  # 4. the first write
        model = team.data_parallel(setup.experiment.model, setup.device, setup.settings.seed)
        state = resume_state(setup, job, team)  # 5. where a resume continues
        with Loggers(setup, plan, job, team, state) as loggers:
            if setup.settings.mode == "lr_find":  # 6-7. a probe of the lr instead of a fit
                metrics = find_lr(setup, model, folder, loggers, job, team, clock)
            else:
                result = train(setup, model, state, folder, loggers, job, team)  # 6. fit
                metrics = results(setup, model, result, folder.provenance, job, team, clock)  # 7.
            loggers.write_final(metrics)
        metrics = folder.finish(metrics)  # 8. the outcome, in one write
        loggers.summary(metrics, job)
    return metrics


@dataclass
class Setup:
    """A run built and loaded but not started: nothing of it is on disk yet."""

    experiment: Experiment
    data: Dataset
    training: Training
    loader: InMemoryLoader
    saved: dict[str, Any] | None  # the checkpoint a resume continues from
    plan: Plan

    @property
    def config(self) -> DictConfig:
        return self.experiment.config

    @property
    def resolved(self) -> dict[str, Any]:
        """The config as this process resolves it (what a checkpoint records)."""
        return OmegaConf.to_container(self.config, resolve=True)  # type: ignore[return-value]

    @property
    def settings(self) -> Any:
        return self.experiment.settings

    @property
    def device(self) -> torch.device:
        return self.experiment.device


def set_up(
    plan: Plan, job: Job, team: Team, load: Callable[[Experiment], Dataset] | None = None
) -> Setup:
    """Build every part, read the checkpoint a resume continues from, load the data onto the
    device (``load``: how; sweep members trained together share one copy); writes nothing, so
    any failure leaves the folder as it was."""
    experiment = build_experiment(OmegaConf.create(plan.config), team.processes.world)
    saved = read_checkpoint(plan, experiment, job, team) if plan.resuming else None
    data = (load or load_data)(experiment)
    training = experiment.training
    if data.spec != experiment.spec:  # the files hold other sizes than the config said
        if team.parallel:
            check_parallel(
                experiment.settings, experiment.optimizer_choice, data.spec, team.processes.world
            )
        training = experiment.plan_training(data.spec)
    loader = InMemoryLoader(
        data.train, training.batch_size, shuffle=True, seed=experiment.settings.seed,
        prepare=data.prepare, rank=team.processes.rank, world=team.processes.world,
    )  # fmt: skip
    return Setup(experiment, data, training, loader, saved, plan)


def load_data(experiment: Experiment) -> Dataset:
    """The experiment's dataset, on its device (image batches in its memory format)."""
    data = load_dataset(experiment.config.dataset)
    if experiment.channels_last and hasattr(data.prepare, "channels_last"):
        data.prepare.channels_last = True
    return data.to(experiment.device)


def read_checkpoint(plan: Plan, experiment: Experiment, job: Job, team: Team) -> dict[str, Any]:
    """The checkpoint, checked to fit this run (its weights loaded into the model)."""
    path = job.run_dir / CHECKPOINT_NAME
    if not team.main and not path.exists():  # process 0's own error comes first if it lacks it
        raise UserError(
            f"{path} is not there on this node; every node must see the run folders (a file "
            "system they share)"
        )
    saved = load_checkpoint(path)
    check_resumable(
        saved, OmegaConf.to_container(experiment.config, resolve=True), experiment.model,
        experiment.training.schedule, team.processes,
        plan.previous, path,
    )  # fmt: skip
    return saved


def start(folder: Any, setup: Setup, first: Any, job: Job) -> None:
    """Every process holds the data process 0 holds; then the run's first write."""
    spec, root = setup.data.spec, setup.config.dataset.get("root")
    differ = [
        f"{name} {getattr(spec, name)} vs {getattr(first, name)}"
        for name in spec.__dataclass_fields__
        if getattr(spec, name) != getattr(first, name)
    ]
    if differ:
        raise UserError(
            f"its copy of dataset={first.name}{f' in {root}' if root else ''} differs from "
            f"process 0's ({', '.join(differ)}); give every node the same files"
        )
    from_step = setup.saved["engine"]["step"] if setup.saved else 0
    folder.start(setup.config, job, from_step)
    describe_plan(setup.experiment, setup.training, spec)


def resume_state(setup: Setup, job: Job, team: Team) -> FitState | None:
    """A resume's optimizer, schedule, data order and random streams, put back; its state."""
    if setup.saved is None:
        return None
    optimizer, schedule = setup.training.optimizer, setup.training.schedule
    state = restore(setup.saved, optimizer, schedule, setup.loader, setup.device, team.processes)
    log.info("resuming %s at epoch %d, step %d", job.run_dir, state.epochs_finished + 1, state.step)
    return state


class Loggers:
    """TensorBoard (process 0) and the console, open while the run trains."""

    def __init__(self, setup: Setup, plan: Plan, job: Job, team: Team, state: FitState | None):
        hparams = hparams_of(
            setup.config, setup.data.spec, setup.training.batch_size, plan.overrides
        )
        resume_at = (state.step, state.epochs_finished) if state is not None else None
        self.tensorboard = (
            TensorBoardLogger(job.run_dir, hparams, resume_at) if team.main else NullLogger()
        )
        console = job.console or make_console(quiet=not team.main)
        self.console = ConsoleLogger(console, job.title, PRIMARY_METRIC[setup.data.spec.task])

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.tensorboard.close()  # also when training raised: the events so far are kept
        self.console.on_fit_end(None)

    @property
    def callbacks(self) -> list[Any]:
        return [self.tensorboard, self.console]

    def write_final(self, metrics: dict[str, Any]) -> None:
        """Final numbers as ``final/*`` scalars (the HParams dashboard's metric columns)."""
        if metrics.get("kind") == "lr_find":
            if metrics["suggested_lr"] is not None:
                self.tensorboard.write_final({"suggested_lr": metrics["suggested_lr"]}, 0)
            return
        if metrics["status"] == "interrupted":
            return
        flat = {f"test_{k}": v for k, v in (metrics["test"] or {}).items()}
        flat.update({f"val_{k}": v for k, v in (metrics["val"] or {}).items()})
        if metrics["best_val_loss"] is not None:
            flat["best_val_loss"] = metrics["best_val_loss"]
        flat["epochs_run"] = metrics["epochs_run"]
        self.tensorboard.write_final(flat, metrics["steps"])

    def summary(self, metrics: dict[str, Any], job: Job) -> None:
        """The outcome on the console (an interrupted run's is the command line's to say)."""
        if metrics["status"] == "interrupted":
            return
        message = f": {metrics['message']}" if metrics.get("message") else ""
        log.info("%s%s -> %s", metrics["status"], message, job.run_dir / "metrics.json")
        if metrics.get("kind") == "lr_find":
            self.console.probe_summary(metrics, job.run_dir)
        else:
            self.console.summary(metrics, job.run_dir)


def train(
    setup: Setup, model: torch.nn.Module, state: FitState | None, folder: Any,
    loggers: Loggers, job: Job, team: Team,
) -> FitResult:  # fmt: skip
    """The engine's fit, with checkpoints into the run folder and stops agreed by all processes."""
    training = setup.training
    return fit(
        model, setup.experiment.loss_fn, training.optimizer, training.schedule, training.penalty,
        setup.loader, len(setup.loader), lambda: evaluate_split(setup, model, "val", team),
        fit_settings(setup), loggers.callbacks, state=state,
        save_checkpoint=checkpoint_saver(setup, folder, loggers, team),
        stop_requested=team.any(job.stop_requested), reduce_mean=team.mean(),
    )  # fmt: skip


def fit_settings(setup: Setup) -> FitSettings:
    """What the engine's loop needs to know of the run's settings."""
    settings, early = setup.settings, setup.settings.early_stopping
    return FitSettings(
        epochs=settings.epochs,
        log_every_steps=settings.log_every_steps,
        eval_every_epochs=settings.eval_every_epochs,
        patience=early["patience"] if early["enabled"] else None,
        min_delta=early["min_delta"],
        monitor=setup.experiment.selection[0],
        maximize=setup.experiment.selection[1],
        restore_best=settings.restore_best,
        clip_grad_norm=setup.experiment.optimizer_choice.clip_grad_norm,
        accumulate_steps=settings.accumulate_steps,
        checkpoint_every_steps=settings.checkpoint["every_steps"],
    )


def checkpoint_saver(
    setup: Setup, folder: Any, loggers: Loggers, team: Team
) -> Callable[[FitState], None] | None:
    """What writes the run's checkpoint (None: checkpoints are off)."""
    if not setup.settings.checkpoint["enabled"]:
        return None
    training, resolved = setup.training, setup.resolved

    def save(fit_state: FitState) -> None:
        parts = checkpoint_parts(
            resolved, setup.experiment.model, training.optimizer, training.schedule,
            setup.loader, fit_state, team.processes,
        )  # fmt: skip
        loggers.tensorboard.flush()  # events up to the checkpoint are on disk before it is
        folder.save_checkpoint(parts)

    return save


def evaluate_split(setup: Setup, model: torch.nn.Module, name: str, team: Team) -> dict[str, float]:
    """Loss and metrics over a split (each process its part; exact sums added across them)."""
    return evaluate(
        model, setup.experiment.loss_fn, getattr(setup.data, name), setup.data.spec,
        setup.settings.eval_batch_size, setup.data.prepare,
        shard=(team.processes.rank, team.processes.world), reduce_sum=reduce_sum,
    )  # fmt: skip


def find_lr(
    setup: Setup, model: torch.nn.Module, folder: Any, loggers: Loggers, job: Job, team: Team,
    clock: float,
) -> dict[str, Any]:  # fmt: skip
    """The learning-rate range test (trainlab.lr_find): its curve to TensorBoard and
    lr_find.png, the suggestion and the command that trains with it to metrics.json."""
    settings = read_probe_settings(**setup.settings.lr_find)
    curve = probe(
        model, setup.experiment.loss_fn, setup.training.optimizer, setup.training.penalty,
        setup.loader, settings, loggers.tensorboard.write_probe_point, team.mean(),
        setup.experiment.optimizer_choice.clip_grad_norm, team.any(job.stop_requested),
        setup.settings.accumulate_steps,
    )  # fmt: skip
    suggested, rule = curve.suggestion()
    title = f"{job.title}: lr range test ({len(curve.lrs)} steps)"
    folder.write_picture(PROBE_PLOT_NAME, lambda file: plot(file, curve, suggested, title))
    kept = [
        o
        for o in setup.plan.overrides
        if override_key(o) not in ("mode", "optimizer.lr") and not o.startswith("lr_find.")
    ]
    hydra_overrides = list(job.hydra_config.overrides.hydra) if job.hydra_config else []
    command = None if suggested is None else " ".join(
        ["trainlab", *as_typed(hydra_overrides), *kept,
         shell_override("optimizer.lr", float(f"{suggested:.3g}"))]
    )  # fmt: skip
    last = curve.lrs[-1] if curve.lrs else settings.min_lr
    message = f"ramped the lr to {last:.3g}"
    if curve.stopped_early:
        message = f"stopped at lr {last:.3g}: the smoothed loss rose past {settings.divergence:g}x its best"
    elif curve.stopped_on_request:
        message = f"stopped on request at lr {last:.3g}, after {len(curve.lrs)} steps"
    return {
        "kind": "lr_find",
        "status": "completed" if suggested is not None else "diverged",
        "message": message,
        "task": setup.data.spec.task,
        "suggested_lr": suggested,
        "rule": rule,
        "command": command,
        "steps": len(curve.lrs),
        "epochs_run": 0,
        "curve": {"lr": curve.lrs, "loss": curve.losses, "smoothed": curve.smoothed},
        "hparams": hparams_of(
            setup.config, setup.data.spec, setup.training.batch_size, setup.plan.overrides
        ),
        "finished_at": now(),
        "host": socket.gethostname(),
        "config_hash": folder.provenance.get("config_hash"),
        "processes": team.processes.world,
        "wall_time_s": time.perf_counter() - clock,
    }


def interrupted(result: FitResult, setup: Setup, job: Job) -> dict[str, Any]:
    """metrics.json for a run stopped by a signal: how far it got and how to continue."""
    how = job.how_to_resume
    if not setup.settings.checkpoint["enabled"]:
        how = "checkpoint.enabled=false, so it cannot be resumed"
    log.info("interrupted: %s; %s", result.message, how)
    return {
        "status": "interrupted",
        "message": f"{result.message}; {how}",
        "epochs_run": result.epochs_run,
        "steps": result.steps,
        "history": result.history,
    }


def results(
    setup: Setup, model: torch.nn.Module, result: FitResult, provenance: dict[str, Any],
    job: Job, team: Team, clock: float,
) -> dict[str, Any]:  # fmt: skip
    """What the run found. The weights that end it are the best ones when restored, else the
    last ones (not worth testing if they diverged); "val" describes the same weights as "test"."""
    if result.status == "interrupted":
        return interrupted(result, setup, job)
    restored = setup.settings.restore_best and result.best_val is not None
    tested_val = result.best_val if restored else result.last_val
    testable = tested_val is not None and (restored or result.status != "diverged")
    test = evaluate_split(setup, model, "test", team) if testable else None
    history, spec = result.history, setup.data.spec
    return {
        "status": result.status,
        "message": result.message,
        "task": spec.task,
        "primary_metric": PRIMARY_METRIC[spec.task],
        "metric_names": metric_names(spec),
        "epochs_run": result.epochs_run,
        "steps": result.steps,
        "batch_size": setup.training.batch_size,
        "best_epoch": result.best_epoch,  # by the monitored metric
        "monitor": f"val_{setup.experiment.selection[0]}",
        "best_val_loss": result.best_val["loss"] if result.best_val else None,
        "restored_best": restored,
        "val": tested_val,
        "test": test,
        "final": {
            "epoch": result.epochs_run,
            "train_loss": history["train_loss"][-1] if history.get("train_loss") else None,
            "val": result.last_val,
        },
        "history": history,
        "epoch_seconds": result.epoch_seconds,
        "hparams": hparams_of(setup.config, spec, setup.training.batch_size, setup.plan.overrides),
        "finished_at": now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "config_hash": provenance.get("config_hash"),
        "processes": team.processes.world,
        "resumes": len(provenance.get("resumes", [])),
        "wall_time_s": time.perf_counter() - clock,
    }
