"""One experiment from a composed config: build everything, train, test, write metrics.json.

Everything a user can get wrong is built and checked before any data is loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel

from trainlab.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from trainlab.data import Dataset, DatasetSpec, InMemoryLoader, describe_dataset, load_dataset
from trainlab.distributed import (
    Processes,
    agreed,
    any_process,
    broadcast,
    from_environment,
    gather,
    reduce_sum,
)
from trainlab.engine import FitSettings, FitState, fit
from trainlab.errors import ConfigError, UserError, first_line
from trainlab.files import OutputError, atomic_write, read_json, write_json
from trainlab.loggers import ConsoleLogger, NullLogger, TensorBoardLogger, make_console
from trainlab.losses import build_loss
from trainlab.metrics import PRIMARY_METRIC, evaluate, metric_names
from trainlab.models import build_model, for_device, uses_convolutions
from trainlab.optim import (
    LRSchedule,
    OptimizerChoice,
    TrainingPlan,
    build_schedule,
    read_optimizer,
)
from trainlab.provenance import RUNTIME_ONLY, record_resume
from trainlab.provenance import finish as finish_provenance
from trainlab.provenance import record as record_provenance
from trainlab.regularizers import Penalty, build_regularizer
from trainlab.resume import CHANGEABLE_ON_RESUME, FINISHED, differences
from trainlab.settings import check_settings, non_negative, require, to_plain

log = logging.getLogger("trainlab")
GROUPS = ("dataset", "model", "loss", "optimizer", "schedule", "regularizer")


@dataclass(frozen=True)
class RunSettings:
    """The top-level keys of the config (everything outside the groups)."""

    epochs: int
    batch_size: int
    seed: int
    device: str
    log_every_steps: int
    eval_every_epochs: int
    eval_batch_size: int
    cpu_threads: int | None
    precision: Literal["fp32", "bf16"]
    channels_last: bool | Literal["auto"]
    compile: bool
    restore_best: bool
    checkpoint: dict
    members_per_gpu: int
    resume: str | None
    early_stopping: dict


def _early_stopping(enabled: bool, patience: int, min_delta: float) -> None:
    require(patience >= 1, f"early_stopping.patience must be >= 1, got {patience}")
    non_negative("early_stopping.min_delta", min_delta)


def _checkpoint(enabled: bool, every_steps: int | None) -> None:
    require(
        every_steps is None or every_steps >= 1,
        f"checkpoint.every_steps must be >= 1 or null, got {every_steps}",
    )


def read_run_settings(config: Mapping[str, Any]) -> RunSettings:
    """Check the top-level keys: types, ranges, and the early-stopping block."""
    top = {key: value for key, value in config.items() if key not in GROUPS}
    settings = RunSettings(**check_settings("", top, RunSettings))
    require(
        0 <= settings.seed < 2**63, f"seed must be in [0, 2^63), got {settings.seed} (e.g. seed=0)"
    )
    for key in (
        "epochs", "batch_size", "log_every_steps", "eval_every_epochs", "eval_batch_size",
        "members_per_gpu",
    ):  # fmt: skip
        value = getattr(settings, key)
        require(value >= 1, f"{key} must be >= 1, got {value} (e.g. {key}=10)")
    cores = os.cpu_count() or 1
    require(
        settings.cpu_threads is None or 1 <= settings.cpu_threads <= cores,
        f"cpu_threads must be null or 1..{cores} (the cores here), got {settings.cpu_threads}",
    )
    early = check_settings("early_stopping", settings.early_stopping, _early_stopping)
    _early_stopping(**early)
    _checkpoint(**check_settings("checkpoint", settings.checkpoint, _checkpoint))
    return settings


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        require(
            torch.backends.mps.is_available(),
            "device=mps but MPS is not available here; use device=auto or device=cpu",
        )
        return torch.device("mps")
    if re.fullmatch(r"cuda(:\d+)?", name):
        require(
            torch.cuda.is_available(),
            f"device={name} but torch sees no CUDA GPU on this machine; use device=auto or device=cpu",
        )
        device = torch.device(name)
        count = torch.cuda.device_count()
        require(
            device.index is None or device.index < count,
            f"device={name} but only {count} CUDA device(s) exist; use cuda:0..cuda:{count - 1}",
        )
        return device
    raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _hparams(
    config: DictConfig, spec: DatasetSpec, batch_size: int, extra: Mapping[str, Any]
) -> dict:
    """The numbers and choices a sweep compares runs by (HParams dashboard columns)."""
    values: dict[str, Any] = {group: config[group]["name"] for group in GROUPS}
    values.update(
        task=spec.task,
        lr=config.optimizer.get("lr", 0.0),
        batch_size=batch_size,
        epochs=config.epochs,
        seed=config.seed,
    )
    values.update(extra)
    return {
        key: value if isinstance(value, bool | int | float | str) else str(value)
        for key, value in values.items()
    }  # TensorBoard takes only these types (None becomes "None")


def _channels_last(choice: bool | str, device: torch.device, model: torch.nn.Module) -> bool:
    """``auto``: channels_last for convolutional models on CUDA, where it speeds them up."""
    if choice == "auto":
        return device.type == "cuda" and uses_convolutions(model)
    return bool(choice)


# Batch size, optimizer, lr schedule and penalty: what the data's size decides.
Training = tuple[int, torch.optim.Optimizer, LRSchedule, Penalty | None]


def _plan_training(
    config: DictConfig,
    settings: RunSettings,
    spec: DatasetSpec,
    optimizer_choice: OptimizerChoice,
    model: torch.nn.Module,
) -> Training:
    """Batch size, optimizer, lr schedule and penalty for ``spec``'s training-set size."""
    full_batch = optimizer_choice.full_batch or settings.batch_size >= spec.train_size
    batch_size = spec.train_size if full_batch else settings.batch_size
    steps_per_epoch = math.ceil(spec.train_size / batch_size)
    optimizer = optimizer_choice.build(model.parameters())
    plan = TrainingPlan(settings.epochs, steps_per_epoch)
    schedule = build_schedule(config.schedule, optimizer, plan)
    penalty = build_regularizer(config.regularizer, model)
    return batch_size, optimizer, schedule, penalty


def _log_plan(config, settings, spec, optimizer_choice, batch_size, device) -> None:
    log.info(
        "dataset=%s (%s; %d train / %d val / %d test) model=%s loss=%s optimizer=%s lr=%g "
        "schedule=%s regularizer=%s | batch %d, %d steps/epoch, %d epochs, device %s, %s",
        spec.name, spec.task, spec.train_size, spec.val_size, spec.test_size,
        config.model.name, config.loss.name, optimizer_choice.name,
        config.optimizer.get("lr", float("nan")), config.schedule.name, config.regularizer.name,
        batch_size, math.ceil(spec.train_size / batch_size), settings.epochs, device,
        settings.precision,
    )  # fmt: skip
    if optimizer_choice.full_batch and settings.batch_size != spec.train_size:
        log.info(
            "optimizer=%s is full batch: batch_size=%d is not used",
            optimizer_choice.name,
            settings.batch_size,
        )
    elif settings.batch_size > spec.train_size:
        log.info(
            "batch_size=%d exceeds the %d training examples: full batch",
            settings.batch_size,
            spec.train_size,
        )


@dataclass
class Experiment:
    """Everything built from a config before any data is loaded: building it checks it."""

    settings: RunSettings
    device: torch.device
    spec: DatasetSpec
    loss_fn: Any
    optimizer_choice: OptimizerChoice
    model: torch.nn.Module
    channels_last: bool
    training: Training
    processes: Processes


def check_complete(config: DictConfig) -> None:
    """Every group has an option and every ``${...}`` resolves."""
    for group in GROUPS:
        node = config.get(group)
        require(
            isinstance(node, DictConfig) and "name" in node,
            f"{group}: no option chosen (~{group} removes it); pick one, e.g. {group}=<option> "
            "(trainlab --help lists them)",
        )
    try:
        OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(
            f"the config cannot be resolved: {first_line(error)}; fix the ${{...}} or ??? value it names"
        ) from None


def build_experiment(config: DictConfig) -> Experiment:
    """Build and check every part of ``config``; raise UserError naming the first problem.

    In a data-parallel run every process builds and checks its own copy, they agree on
    whether any failed (its GPU out of memory, say), then DistributedDataParallel wraps
    the model.
    """
    processes = from_environment()
    experiment = agreed(lambda: _build_on_this_process(config, processes), processes)
    if processes.parallel:
        # Same weights everywhere (DDP also copies process 0's), then each process its own
        # dropout stream: the same masks on every slice of a batch would be correlated.
        torch.manual_seed(experiment.settings.seed + processes.rank)
        device = experiment.device
        ids = [device.index] if device.type == "cuda" else None
        experiment.model = DistributedDataParallel(experiment.model, device_ids=ids)
    return experiment


def _build_on_this_process(config: DictConfig, processes: Processes) -> Experiment:
    check_complete(config)
    settings = read_run_settings(config)
    device = resolve_device(settings.device)
    if processes.parallel and device.type == "cuda":  # the one join() gave this process
        device = torch.device("cuda", torch.cuda.current_device())
    spec = describe_dataset(config.dataset)
    loss_fn = build_loss(config.loss, spec)
    optimizer_choice = read_optimizer(config.optimizer)
    if settings.cpu_threads is not None:
        torch.set_num_threads(settings.cpu_threads)
    torch.manual_seed(settings.seed)
    try:
        network = build_model(config.model, spec)
    except (MemoryError, RuntimeError) as error:  # torch cannot allocate the weights
        first = first_line(error) or type(error).__name__
        raise ConfigError(
            f"model={config.model.name} cannot be built here ({first[:120]}); use smaller sizes"
        ) from None
    channels_last = _channels_last(settings.channels_last, device, network)
    model = for_device(network, device, settings.precision, channels_last, settings.compile)
    if processes.parallel:
        _check_parallel(settings, optimizer_choice, spec, processes.world)
    training = _plan_training(config, settings, spec, optimizer_choice, model)
    return Experiment(
        settings, device, spec, loss_fn, optimizer_choice, model, channels_last, training,
        processes,
    )  # fmt: skip


def _load_data(config: DictConfig, experiment: Experiment) -> tuple[Dataset, Training]:
    """The dataset, and the training re-planned when its sizes are known only now (a smaller
    copy of the files, say). Every process of a data-parallel run must hold the same data:
    a node that lacks it, or holds other sizes, fails the run on all of them."""
    processes = experiment.processes
    data = agreed(lambda: load_dataset(config.dataset), processes)
    first = broadcast(data.spec, processes)

    def same_as_first() -> None:
        root = config.dataset.get("root")
        differ = [
            f"{field.name} {getattr(data.spec, field.name)} vs {getattr(first, field.name)}"
            for field in dataclasses.fields(first)
            if getattr(data.spec, field.name) != getattr(first, field.name)
        ]
        require(
            not differ,
            f"its copy of dataset={first.name}{f' in {root}' if root else ''} differs from "
            f"process 0's ({', '.join(differ)}); give every node the same files",
        )

    agreed(same_as_first, processes)
    if data.spec == experiment.spec:
        return data, experiment.training

    def plan() -> Training:
        settings, choice = experiment.settings, experiment.optimizer_choice
        if processes.parallel:
            _check_parallel(settings, choice, data.spec, processes.world)
        return _plan_training(config, settings, data.spec, choice, experiment.model)

    return data, agreed(plan, processes)


def check_data_parallel(config: DictConfig, world: int) -> None:
    """Whether ``config`` can train as one run of ``world`` processes (a sweep checks its
    members before a launcher starts them as jobs of that many tasks)."""
    _check_parallel(
        read_run_settings(config),
        read_optimizer(config.optimizer),
        describe_dataset(config.dataset),
        world,
    )


def _check_parallel(
    settings: RunSettings, choice: OptimizerChoice, spec: DatasetSpec, world: int
) -> None:
    """What data-parallel training cannot do, refused before it starts."""
    require(
        choice.name != "lbfgs",
        f"optimizer=lbfgs decides its line search from each process's own loss, so {world} "
        "processes would disagree; run it in one process, or use optimizer=gd",
    )
    if choice.full_batch or settings.batch_size >= spec.train_size:
        return
    require(
        settings.batch_size % world == 0,
        f"batch_size={settings.batch_size} (the global batch) does not divide among {world} "
        f"processes; use a multiple of {world}",
    )
    last = spec.train_size % settings.batch_size
    require(
        last == 0 or last >= world,
        f"the last batch of each epoch holds {last} examples, fewer than the {world} processes; "
        "choose batch_size so that it divides dataset.train_size",
    )


def _check_resumable(
    saved: dict[str, Any],
    config: DictConfig,
    experiment: Experiment,
    path: Path,
    previous: Mapping[str, Any],
) -> None:
    """Refuse a checkpoint written for another experiment, or one with nothing left to do."""
    plain = OmegaConf.to_container(config, resolve=True)
    changed = differences(saved["config"], plain, ignore=(*CHANGEABLE_ON_RESUME, *RUNTIME_ONLY))
    if changed:
        raise CheckpointError(
            f"{path} was written for another experiment: {'; '.join(changed[:4])}; resume it "
            "with its own run folder's config or start a new run"
        )
    try:
        experiment.model.load_state_dict(saved["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"{path} holds weights for another model ({str(error).splitlines()[-1].strip()}); "
            "resume it with the config it was written for"
        ) from None
    written_by = len(saved["processes"]) or 1
    if written_by != experiment.processes.world:
        raise CheckpointError(
            f"{path} was written by {written_by} process(es), and this resume has "
            f"{experiment.processes.world}; resume with the same torchrun --nproc-per-node"
        )
    state = saved["engine"]
    epochs = experiment.settings.epochs
    schedule = experiment.training[2]
    # A run killed after its last checkpoint but before writing its results still needs them:
    # only metrics.json says whether it truly finished.
    finished = previous.get("status") in FINISHED  # what metrics.json says
    planned = saved["config"]["epochs"]
    if epochs < planned:
        raise UserError(
            f"epochs={epochs} but the run in {path.parent} was planned for {planned}; a resume "
            f"can only extend it (epochs >= {planned})"
        )
    extending = epochs > planned
    if state["status"] != "completed" and (finished or extending):
        raise UserError(
            f"the run in {path.parent} already ended ({state['status']}); nothing to resume"
        )
    if finished and not extending:
        raise UserError(
            f"the run in {path.parent} has finished all its {epochs} epochs; to train it further "
            f"resume with a larger epochs=..."
        )
    if schedule.sized_by_plan and extending:
        raise UserError(
            f"schedule={config.schedule.name} is shaped by the run's length, so epochs cannot "
            "change on resume; start a new run with the longer schedule"
        )


def _save_config_files(run_dir: Path, files: Mapping[str, Any]) -> None:
    """Hydra's ``.hydra/`` record, written only once the config has passed every check."""
    for name, content in files.items():
        text = OmegaConf.to_yaml(content)
        atomic_write(run_dir / ".hydra" / name, lambda file, text=text: file.write(text.encode()))


def run(
    config: DictConfig,
    run_dir: Path,
    *,
    swept: Mapping[str, Any] | None = None,
    console: Console | None = None,
    title: str = "trainlab",
    command: list[str] | None = None,
    resume: bool = False,
    stop_requested: Callable[[], bool] | None = None,
    config_files: Mapping[str, Any] | None = None,
    resume_hint: str | None = None,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run one experiment into ``run_dir``; return what metrics.json holds.

    ``swept`` adds hparams to compare by (the command-line overrides). ``resume`` continues
    from ``run_dir``'s checkpoint. ``stop_requested`` is polled after every step: when true,
    the run checkpoints and ends ``interrupted``. ``config_files`` go to ``run_dir/.hydra``
    once the config has passed every check; ``resume_hint`` says how to continue an
    interrupted run (default: ``trainlab resume=RUN_DIR``); ``on_start`` is called once every
    check has passed, before anything is written. Raises UserError for anything the user can fix,
    before touching data or files whenever the config alone shows it.
    """
    started, clock = _now(), time.perf_counter()
    experiment = build_experiment(config)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    metrics_path = run_dir / "metrics.json"

    def read_checkpoint() -> tuple[dict[str, Any] | None, dict[str, Any]]:
        if resume and not experiment.processes.main and not checkpoint_path.exists():
            # Process 0's own error comes first when it lacks it too.
            raise UserError(
                f"{checkpoint_path} is not there on this node; every node must see the run "
                "folders (a file system they share)"
            )
        saved = load_checkpoint(checkpoint_path) if resume else None
        previous = (read_json(metrics_path) or {}) if saved is not None else {}
        if saved is not None:
            _check_resumable(saved, config, experiment, checkpoint_path, previous)
        return saved, previous

    saved, previous = agreed(read_checkpoint, experiment.processes)
    if saved is not None:
        for leftover in run_dir.glob(".*.tmp") if experiment.processes.main else ():
            leftover.unlink(missing_ok=True)  # a write the kill cut short

    main = experiment.processes.main  # in a data-parallel run, process 0 writes the files
    if on_start is not None:
        on_start()
    if previous:
        started = previous.get("started_at", started)

    def start() -> None:
        if not main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if config_files:
            _save_config_files(run_dir, config_files)
        running = {"status": "running", "started_at": started, "pid": os.getpid()}
        write_json(metrics_path, {**running, "host": socket.gethostname()})

    agreed(start, experiment.processes)  # a folder process 0 cannot write ends them all
    if not main:
        return _train(
            config, experiment, run_dir, saved, started, clock,
            swept=swept, console=console, title=title, command=list(command or sys.argv),
            stop_requested=stop_requested, resume_hint="",
        )  # fmt: skip
    try:
        return _train(
            config, experiment, run_dir, saved, started, clock,
            swept=swept, console=console, title=title,
            command=list(command or sys.argv), stop_requested=stop_requested,
            resume_hint=resume_hint or f"continue it with: trainlab resume={run_dir}",
        )  # fmt: skip
    except BaseException as error:  # record why the run ended, then let the caller report it
        if (read_json(metrics_path) or {}).get("status") in FINISHED:
            raise  # the results are written: a late Ctrl-C must not hide them
        if isinstance(error, KeyboardInterrupt):
            status = "interrupted"
            message = (
                "stopped at once by a second Ctrl-C or SIGTERM; a resume continues from the last "
                "checkpoint"
                if checkpoint_path.exists()
                else "stopped by Ctrl-C or SIGTERM before its first checkpoint"
            )
        elif isinstance(error, UserError):
            status, message = "failed", str(error)
        else:
            status, message = "failed", f"{type(error).__name__}: {error}"
        record = {"status": status, "error": message, "started_at": started}
        if status == "failed" and checkpoint_path.exists():
            record["resumable"] = True  # a sweep run again resumes it, keeping the checkpoint
        with contextlib.suppress(OutputError):  # a full disk may refuse this too
            write_json(metrics_path, record)
        log.error("%s: %s", status, message)
        raise


def _train(
    config: DictConfig,
    experiment: Experiment,
    run_dir: Path,
    saved: dict[str, Any] | None,
    started: str,
    clock: float,
    *,
    swept: Mapping[str, Any] | None,
    console: Console | None,
    title: str,
    command: list[str],
    stop_requested: Callable[[], bool] | None,
    resume_hint: str,
) -> dict[str, Any]:
    settings, device, spec = experiment.settings, experiment.device, experiment.spec
    model, loss_fn, optimizer_choice = (
        experiment.model,
        experiment.loss_fn,
        experiment.optimizer_choice,
    )
    training = experiment.training
    metrics_path = run_dir / "metrics.json"
    processes = experiment.processes
    main = processes.main

    def provenance_of_run() -> dict[str, Any]:
        if not main:
            return {}
        if saved is None:
            return record_provenance(run_dir, config, command, started)
        return record_resume(run_dir, config, command, _now(), saved["engine"]["step"])

    provenance = agreed(provenance_of_run, processes)
    data, training = _load_data(config, experiment)
    spec = data.spec
    if experiment.channels_last and hasattr(data.prepare, "channels_last"):
        data.prepare.channels_last = True
    data = data.to(device)
    batch_size, optimizer, schedule, penalty = training
    _log_plan(config, settings, spec, optimizer_choice, batch_size, device)
    loader = InMemoryLoader(
        data.train, batch_size, shuffle=True, seed=settings.seed, prepare=data.prepare,
        rank=processes.rank, world=processes.world,
    )  # fmt: skip
    state = None
    if saved is not None:
        own = saved["processes"][processes.rank] if processes.parallel else saved
        optimizer.load_state_dict(saved["optimizer"])
        schedule.scheduler.load_state_dict(saved["schedule"])
        loader.load_state_dict(own["loader"])
        state = FitState.from_state_dict(saved["engine"], device)
        if processes.parallel:
            state.sums = own["sums"].to(device)
        restore_rng_states(own["rng"])
        log.info("resuming %s at epoch %d, step %d", run_dir, state.epochs_finished + 1, state.step)
    names = metric_names(spec)
    primary = PRIMARY_METRIC[spec.task]
    hparams = _hparams(config, spec, batch_size, to_plain(swept or {}))
    resume_at = (state.step, state.epochs_finished) if state is not None else None
    tensorboard = TensorBoardLogger(run_dir, hparams, resume_at) if main else NullLogger()
    if not main:
        console = Console(file=open(os.devnull, "w"))  # noqa: SIM115  (quiet processes)
    console_logger = ConsoleLogger(console or make_console(), title)
    early = settings.early_stopping
    fit_settings = FitSettings(
        epochs=settings.epochs,
        log_every_steps=settings.log_every_steps,
        eval_every_epochs=settings.eval_every_epochs,
        patience=early["patience"] if early["enabled"] else None,
        min_delta=early["min_delta"],
        restore_best=settings.restore_best,
        checkpoint_every_steps=settings.checkpoint["every_steps"],
    )
    plain_config = OmegaConf.to_container(config, resolve=True)
    checkpoint_path = run_dir / CHECKPOINT_NAME

    def save(fit_state: FitState) -> None:
        # Each process's own random streams and running loss sums; process 0 writes them all.
        own = {"rng": rng_states(), "loader": loader.state_dict(), "sums": fit_state.sums}
        every = gather(own, processes)
        if not main:
            return
        tensorboard.flush()  # events up to the checkpoint are on disk before it is
        parts = {
            "config": plain_config,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.scheduler.state_dict(),
            "loader": own["loader"],
            "engine": fit_state.state_dict(),
            "rng": own["rng"],
            "processes": every if processes.parallel else [],
        }
        save_checkpoint(checkpoint_path, parts)

    def evaluate_split(split):
        return evaluate(
            model, loss_fn, split, spec, settings.eval_batch_size, data.prepare,
            shard=(processes.rank, processes.world), reduce_sum=reduce_sum,
        )  # fmt: skip

    stop = stop_requested or (lambda: False)
    if processes.parallel:  # every process stops after the same step
        polled = stop

        def stop() -> bool:
            return any_process(polled())

    try:
        result = fit(
            model,
            loss_fn,
            optimizer,
            schedule,
            penalty,
            loader,
            len(loader),
            lambda: evaluate_split(data.val),
            fit_settings,
            [tensorboard, console_logger],
            state=state,
            save_checkpoint=save if settings.checkpoint["enabled"] else None,
            stop_requested=stop,
            reduce_mean=(lambda t: reduce_sum(t) / processes.world) if processes.parallel else None,
        )
        if result.status == "interrupted" and not main:
            return {"status": "interrupted", "message": result.message}
        if result.status == "interrupted":
            how = resume_hint
            if not settings.checkpoint["enabled"]:
                how = "checkpoint.enabled=false, so it cannot be resumed"
            return _interrupted(run_dir, result, started, how)
        # The weights that end the run: the best ones when restored, else the last ones (not
        # worth testing if they diverged). "val" always describes the same weights as "test".
        restored = settings.restore_best and result.best_val is not None
        tested_val = result.best_val if restored else result.last_val
        testable = tested_val is not None and (restored or result.status != "diverged")
        test = evaluate_split(data.test) if testable else None
        history = result.history
        metrics = {
            "status": result.status,
            "message": result.message,
            "task": spec.task,
            "primary_metric": primary,
            "metric_names": names,
            "epochs_run": result.epochs_run,
            "steps": result.steps,
            "batch_size": batch_size,
            "best_epoch": result.best_epoch,
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
            "hparams": hparams,
            "started_at": started,
            "finished_at": _now(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "config_hash": provenance.get("config_hash"),
            "processes": processes.world,
            "resumes": len(provenance.get("resumes", [])),
            "wall_time_s": time.perf_counter() - clock,
        }
        flat = {f"test_{k}": v for k, v in (test or {}).items()}
        flat.update({f"val_{k}": v for k, v in (tested_val or {}).items()})
        if result.best_val:
            flat["best_val_loss"] = result.best_val["loss"]
        flat["epochs_run"] = result.epochs_run
        tensorboard.write_final(flat)
    finally:  # also when training raised: flush the events and release the live display
        tensorboard.close()
        console_logger.on_fit_end(None)
    if not main:
        return metrics
    write_json(metrics_path, metrics)
    finish_provenance(run_dir, provenance, metrics["finished_at"])
    log.info(
        "%s%s -> %s", result.status, f": {result.message}" if result.message else "", metrics_path
    )
    console_logger.summary(metrics, run_dir)
    return metrics


def _interrupted(run_dir: Path, result: Any, started: str, how: str) -> dict[str, Any]:
    """metrics.json for a run stopped by a signal: how far it got and how to continue."""
    metrics = {
        "status": "interrupted",
        "message": f"{result.message}; {how}",
        "epochs_run": result.epochs_run,
        "steps": result.steps,
        "history": result.history,
        "started_at": started,
        "interrupted_at": _now(),
        "pid": os.getpid(),
    }
    write_json(run_dir / "metrics.json", metrics)
    log.info("interrupted: %s", metrics["message"])
    return metrics
