"""Everything a config describes, built and checked before any data is loaded.

``build_experiment(config)`` checks the top-level keys and builds the data spec, model, loss,
optimizer, lr schedule and penalty; a mistake in any of them is a one-line UserError here,
before a file is read or written.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainlab.config_keys import GROUPS
from trainlab.data import DatasetSpec, describe_dataset
from trainlab.errors import ConfigError, first_line
from trainlab.losses import LossFn, build_loss
from trainlab.lr_find import read_probe_settings
from trainlab.metric_names import monitored
from trainlab.models import build_model, for_device, uses_convolutions
from trainlab.optim import LRSchedule, OptimizerChoice, TrainingPlan, build_schedule, read_optimizer
from trainlab.regularizers import Penalty, build_regularizer
from trainlab.settings import check_settings, non_negative, require

log = logging.getLogger("trainlab")
USER_EXAMPLES = {"model": "my_models.WideNet", "loss": "my_losses.focal"}


@dataclass(frozen=True)
class RunSettings:
    """The top-level keys of the config (everything outside the groups)."""

    mode: Literal["train", "lr_find"]
    lr_find: dict
    epochs: int
    batch_size: int
    accumulate_steps: int
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
    fused: dict
    resume: str | None
    early_stopping: dict
    report: dict


def _early_stopping(
    enabled: bool,
    patience: int,
    min_delta: float,
    monitor: str = "val_loss",
    mode: str | None = None,
) -> None:
    """(``monitor`` is checked against the task's metrics once the dataset is known.)"""
    require(patience >= 1, f"early_stopping.patience must be >= 1, got {patience}")
    non_negative("early_stopping.min_delta", min_delta)


def _checkpoint(enabled: bool, every_steps: int | None) -> None:
    require(
        every_steps is None or every_steps >= 1,
        f"checkpoint.every_steps must be >= 1 or null, got {every_steps}",
    )


def _fused(max_members: int, checkpoint_seconds: float) -> None:
    require(max_members >= 1, f"fused.max_members must be >= 1, got {max_members}")
    non_negative("fused.checkpoint_seconds", checkpoint_seconds)


def _report(metric: str | None, why: str | None) -> None:
    require(
        metric is None or re.fullmatch(r"(val|test)_\w+", metric) is not None,
        f"report.metric must be null or val_<metric> / test_<metric>, got {metric!r} "
        "(e.g. report.metric=test_mse)",
    )


def read_run_settings(config: Mapping[str, Any]) -> RunSettings:
    """Check the top-level keys: types, ranges, and the early-stopping block."""
    top = {key: value for key, value in config.items() if key not in GROUPS}
    settings = RunSettings(**check_settings("", top, RunSettings))
    require(
        0 <= settings.seed < 2**63, f"seed must be in [0, 2^63), got {settings.seed} (e.g. seed=0)"
    )
    for key in (
        "epochs", "batch_size", "accumulate_steps", "log_every_steps", "eval_every_epochs",
        "eval_batch_size", "members_per_gpu",
    ):  # fmt: skip
        value = getattr(settings, key)
        require(value >= 1, f"{key} must be >= 1, got {value} (e.g. {key}=10)")
    cores = os.cpu_count() or 1
    require(
        settings.cpu_threads is None or 1 <= settings.cpu_threads <= cores,
        f"cpu_threads must be null or 1..{cores} (the cores here), got {settings.cpu_threads}",
    )
    _early_stopping(**check_settings("early_stopping", settings.early_stopping, _early_stopping))
    _checkpoint(**check_settings("checkpoint", settings.checkpoint, _checkpoint))
    _report(**check_settings("report", settings.report, _report))
    _fused(**check_settings("fused", settings.fused, _fused))
    read_probe_settings(**check_settings("lr_find", settings.lr_find, read_probe_settings))
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


def check_complete(config: DictConfig) -> None:
    """Every group has an option and every ``${...}`` resolves."""
    for group in GROUPS:
        node = config.get(group)
        require(
            not isinstance(node, DictConfig) or "name" in node or not len(node),
            f"the chosen {group} option's file has no name: line; add name: <the file's name> "
            "to it (the name a run reports)",
        )
        require(
            isinstance(node, DictConfig) and "name" in node,
            f"{group}: no option chosen (~{group} removes it); pick one, e.g. {group}=<option> "
            "(trainlab --help lists them)",
        )
        require(
            not OmegaConf.is_missing(node, "_target_"),
            f"{group}={node.name} needs your code: set {group}._target_=<module.name> (e.g. "
            f"{group}._target_={USER_EXAMPLES.get(group, 'my_module.Thing')})",
        )
    try:
        OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(
            f"the config cannot be resolved: {first_line(error)}; fix the ${{...}} or ??? value it names"
        ) from None


class Training(NamedTuple):
    """What the training set's size decides: batch size, optimizer, lr schedule and penalty."""

    batch_size: int
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    penalty: Penalty | None


@dataclass
class Experiment:
    """Everything built from a config before any data is loaded: building it checks it."""

    config: DictConfig
    settings: RunSettings
    device: torch.device
    spec: DatasetSpec
    loss_fn: LossFn
    optimizer_choice: OptimizerChoice
    model: torch.nn.Module
    channels_last: bool
    training: Training
    selection: tuple[str, bool] = ("loss", False)  # early_stopping.monitor: name, maximize

    def plan_training(self, spec: DatasetSpec) -> Training:
        """Batch size, optimizer, lr schedule and penalty for ``spec``'s training-set size."""
        settings, choice = self.settings, self.optimizer_choice
        full_batch = choice.full_batch or settings.batch_size >= spec.train_size
        batch_size = spec.train_size if full_batch else settings.batch_size
        require(
            settings.accumulate_steps <= batch_size,
            f"accumulate_steps={settings.accumulate_steps} splits each batch of {batch_size} "
            "examples into more micro-batches than it has examples; lower accumulate_steps",
        )
        optimizer = choice.build(self.model.parameters())
        plan = TrainingPlan(settings.epochs, math.ceil(spec.train_size / batch_size))
        schedule = build_schedule(self.config.schedule, optimizer, plan)
        return Training(
            batch_size, optimizer, schedule, build_regularizer(self.config.regularizer, self.model)
        )


def _channels_last(choice: bool | str, device: torch.device, model: torch.nn.Module) -> bool:
    """``auto``: channels_last for convolutional models on CUDA, where it speeds them up."""
    if choice == "auto":
        return device.type == "cuda" and uses_convolutions(model)
    return bool(choice)


def build_experiment(config: DictConfig, world: int = 1) -> Experiment:
    """Build and check every part of ``config`` for a run of ``world`` processes; raise a
    UserError naming the first problem. (Data parallelism wraps the model later, once every
    process has built its own.)"""
    check_complete(config)
    settings = read_run_settings(config)
    device = resolve_device(settings.device)
    if world > 1 and device.type == "cuda":  # the GPU distributed.join() gave this process
        device = torch.device("cuda", torch.cuda.current_device())
    spec = describe_dataset(config.dataset)
    loss_fn = build_loss(config.loss, spec)
    selection = watched(config, spec)
    optimizer_choice = read_optimizer(config.optimizer)
    require(
        settings.accumulate_steps == 1 or optimizer_choice.name != "lbfgs",
        "optimizer=lbfgs evaluates its loss several times per step for its line search, which "
        "micro-batches cannot share; set accumulate_steps=1",
    )
    if world > 1:
        check_parallel(settings, optimizer_choice, spec, world)
    if settings.cpu_threads is not None:
        torch.set_num_threads(settings.cpu_threads)
    torch.manual_seed(settings.seed)
    network = _build_network(config.model, spec)
    channels_last = _channels_last(settings.channels_last, device, network)
    model = for_device(network, device, settings.precision, channels_last, settings.compile)
    experiment = Experiment(
        config, settings, device, spec, loss_fn, optimizer_choice, model, channels_last,
        training=None,  # type: ignore[arg-type]  (planned just below)
        selection=selection,
    )  # fmt: skip
    experiment.training = experiment.plan_training(spec)
    return experiment


def watched(config: DictConfig, spec: DatasetSpec) -> tuple[str, bool]:
    """What early stopping and restore_best watch (``early_stopping.monitor``, by default the
    validation loss): the metric's name and whether larger is better. A plateau schedule's own
    ``schedule.monitor`` is checked against the task's metrics here too."""
    early = config.early_stopping
    try:
        if "monitor" in config.schedule:
            monitored(
                "schedule.monitor", config.schedule.monitor, config.schedule.get("mode"), spec.task
            )
        return monitored(
            "early_stopping.monitor", early.get("monitor", "val_loss"), early.get("mode"), spec.task
        )
    except ValueError as error:
        raise ConfigError(f"{error} (dataset={spec.name})") from None


def _build_network(config: DictConfig, spec: DatasetSpec) -> torch.nn.Module:
    try:
        return build_model(config, spec)
    except (MemoryError, RuntimeError) as error:  # torch cannot allocate the weights
        first = first_line(error) or type(error).__name__
        raise ConfigError(
            f"model={config.name} cannot be built here ({first[:120]}); use smaller sizes"
        ) from None


def check_data_parallel(config: DictConfig, world: int) -> None:
    """Whether ``config`` can train as one run of ``world`` processes (a sweep checks its
    members before a launcher starts them as jobs of that many tasks)."""
    check_parallel(
        read_run_settings(config),
        read_optimizer(config.optimizer),
        describe_dataset(config.dataset),
        world,
    )


def check_parallel(
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
    share = settings.batch_size // world
    require(
        settings.accumulate_steps <= share,
        f"accumulate_steps={settings.accumulate_steps} splits each process's {share} examples "
        "of a batch into more micro-batches than it has examples; lower accumulate_steps",
    )
    last = spec.train_size % settings.batch_size
    require(
        last == 0 or last >= world,
        f"the last batch of each epoch holds {last} examples, fewer than the {world} processes; "
        "choose batch_size so that it divides dataset.train_size",
    )


def describe_plan(experiment: Experiment, training: Training, spec: DatasetSpec) -> None:
    """Log what will run, and any batch size the data overrules."""
    config, settings = experiment.config, experiment.settings
    choice, batch_size = experiment.optimizer_choice, training.batch_size
    log.info(
        "dataset=%s (%s; %d train / %d val / %d test) model=%s loss=%s optimizer=%s lr=%g "
        "schedule=%s regularizer=%s | batch %d, %d steps/epoch, %d epochs, device %s, %s",
        spec.name, spec.task, spec.train_size, spec.val_size, spec.test_size,
        config.model.name, config.loss.name, choice.name,
        config.optimizer.get("lr", float("nan")), config.schedule.name, config.regularizer.name,
        batch_size, math.ceil(spec.train_size / batch_size), settings.epochs, experiment.device,
        settings.precision,
    )  # fmt: skip
    if choice.full_batch and settings.batch_size != spec.train_size:
        log.info(
            "optimizer=%s is full batch: batch_size=%d is not used",
            choice.name,
            settings.batch_size,
        )
    elif settings.batch_size > spec.train_size:
        log.info(
            "batch_size=%d exceeds the %d training examples: full batch",
            settings.batch_size,
            spec.train_size,
        )
