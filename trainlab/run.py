"""One experiment from a composed config: build everything, train, test, write metrics.json.

Everything a user can get wrong is built and checked before any data is loaded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from omegaconf import DictConfig
from rich.console import Console

from trainlab.data import DatasetSpec, InMemoryLoader, describe_dataset, load_dataset
from trainlab.engine import FitSettings, fit
from trainlab.errors import ConfigError
from trainlab.loggers import ConsoleLogger, TensorBoardLogger, make_console
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
from trainlab.provenance import finish as finish_provenance
from trainlab.provenance import record as record_provenance
from trainlab.regularizers import Penalty, build_regularizer
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
    early_stopping: dict


def _early_stopping(enabled: bool, patience: int, min_delta: float) -> None:
    require(patience >= 1, f"early_stopping.patience must be >= 1, got {patience}")
    non_negative("early_stopping.min_delta", min_delta)


def read_run_settings(config: Mapping[str, Any]) -> RunSettings:
    """Check the top-level keys: types, ranges, and the early-stopping block."""
    top = {key: value for key, value in config.items() if key not in GROUPS}
    settings = RunSettings(**check_settings("", top, RunSettings))
    require(
        0 <= settings.seed < 2**63, f"seed must be in [0, 2^63), got {settings.seed} (e.g. seed=0)"
    )
    for key in ("epochs", "batch_size", "log_every_steps", "eval_every_epochs", "eval_batch_size"):
        value = getattr(settings, key)
        require(value >= 1, f"{key} must be >= 1, got {value} (e.g. {key}=10)")
    require(
        settings.cpu_threads is None or settings.cpu_threads >= 1,
        f"cpu_threads must be >= 1 or null, got {settings.cpu_threads}",
    )
    early = check_settings("early_stopping", settings.early_stopping, _early_stopping)
    _early_stopping(**early)
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


def _strict_json(value: Any) -> Any:
    """NaN and infinities become null: strict JSON readers (jq, JavaScript) reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(item) for item in value]
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(_strict_json(data), indent=2, default=str, allow_nan=False)
    temporary.write_text(text + "\n")
    os.replace(temporary, path)


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


def _plan_training(
    config: DictConfig,
    settings: RunSettings,
    spec: DatasetSpec,
    optimizer_choice: OptimizerChoice,
    model: torch.nn.Module,
) -> tuple[int, torch.optim.Optimizer, LRSchedule, Penalty | None]:
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


def run(
    config: DictConfig,
    run_dir: Path,
    *,
    swept: Mapping[str, Any] | None = None,
    console: Console | None = None,
    title: str = "trainlab",
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Run one experiment into ``run_dir``; return what metrics.json holds.

    ``swept`` adds hparams to compare by (the command-line overrides). Raises UserError for
    anything the user can fix, before touching data whenever the config alone shows it.
    """
    started, clock = _now(), time.perf_counter()
    settings = read_run_settings(config)
    device = resolve_device(settings.device)
    spec = describe_dataset(config.dataset)
    loss_fn = build_loss(config.loss, spec)
    optimizer_choice = read_optimizer(config.optimizer)
    if settings.cpu_threads is not None:
        torch.set_num_threads(settings.cpu_threads)
    torch.manual_seed(settings.seed)
    network = build_model(config.model, spec)
    channels_last = _channels_last(settings.channels_last, device, network)
    model = for_device(network, device, settings.precision, channels_last, settings.compile)
    training = _plan_training(config, settings, spec, optimizer_choice, model)  # checks them all

    metrics_path = run_dir / "metrics.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(metrics_path, {"status": "running", "started_at": started})
    provenance = record_provenance(run_dir, config, list(command or sys.argv), started)
    data = load_dataset(config.dataset)
    if data.spec != spec:  # sizes known only now (a smaller copy of the files, say)
        spec = data.spec
        training = _plan_training(config, settings, spec, optimizer_choice, model)
    if channels_last and hasattr(data.prepare, "channels_last"):
        data.prepare.channels_last = True
    data = data.to(device)
    batch_size, optimizer, schedule, penalty = training
    _log_plan(config, settings, spec, optimizer_choice, batch_size, device)
    loader = InMemoryLoader(
        data.train, batch_size, shuffle=True, seed=settings.seed, prepare=data.prepare
    )
    names = metric_names(spec)
    primary = PRIMARY_METRIC[spec.task]
    hparams = _hparams(config, spec, batch_size, to_plain(swept or {}))
    tensorboard = TensorBoardLogger(run_dir, hparams)
    console_logger = ConsoleLogger(console or make_console(), title)
    early = settings.early_stopping
    fit_settings = FitSettings(
        epochs=settings.epochs,
        log_every_steps=settings.log_every_steps,
        eval_every_epochs=settings.eval_every_epochs,
        patience=early["patience"] if early["enabled"] else None,
        min_delta=early["min_delta"],
        restore_best=settings.restore_best,
    )

    def evaluate_split(split):
        return evaluate(model, loss_fn, split, spec, settings.eval_batch_size, data.prepare)

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
        )
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
            "config_hash": provenance["config_hash"],
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
    write_json(metrics_path, metrics)
    finish_provenance(run_dir, provenance, metrics["finished_at"])
    log.info(
        "%s%s -> %s", result.status, f": {result.message}" if result.message else "", metrics_path
    )
    console_logger.summary(metrics, run_dir)
    return metrics
