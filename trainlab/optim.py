"""Optimizers and learning-rate schedules built from config, on torch's own classes.

Each schedule says whether it is stepped after every optimizer step or after every epoch, and
:class:`LRSchedule` does the stepping, so the engine never asks which schedule it runs.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.optim import lr_scheduler

from trainlab.errors import ConfigError, first_line
from trainlab.metric_names import direction
from trainlab.settings import choose, fraction, non_negative, positive, require

log = logging.getLogger("trainlab")

# Each optimizer option is a torch class; its YAML holds the class's keyword arguments plus
# ``full_batch`` (trainlab's own: one step per epoch on the whole training set).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "gd": torch.optim.SGD,
    "sgd": torch.optim.SGD,
    "momentum": torch.optim.SGD,
    "nesterov": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "lbfgs": torch.optim.LBFGS,
}


# Keyword arguments of torch's optimizers that are implementation switches, not training
# knobs (or, for maximize, would turn training upside down): the config cannot set them.
_INTERNAL_KNOBS = ("params", "foreach", "capturable", "differentiable", "fused", "maximize")


def _check_lbfgs(settings: dict[str, Any]) -> None:
    """L-BFGS fails only inside its first step on these; refuse them up front."""
    require(settings.get("max_iter", 20) >= 1, "optimizer.max_iter must be >= 1")
    require(settings.get("history_size", 100) >= 1, "optimizer.history_size must be >= 1")
    max_eval = settings.get("max_eval")
    require(max_eval is None or max_eval >= 1, "optimizer.max_eval must be >= 1 or null")
    line_search = settings.get("line_search_fn")
    require(
        line_search in (None, "strong_wolfe"),
        f"optimizer.line_search_fn must be strong_wolfe or null, got {line_search!r}",
    )


# Checks torch itself makes only once training has started.
_LATE_CHECKS: dict[type[torch.optim.Optimizer], Callable[[dict[str, Any]], None]] = {
    torch.optim.LBFGS: _check_lbfgs,
}


@dataclass(frozen=True)
class OptimizerChoice:
    """The configured optimizer before it meets the model's parameters."""

    name: str
    full_batch: bool
    settings: dict[str, Any]
    clip_grad_norm: float | None = None  # trainlab's own: the gradients' largest global L2 norm

    def build(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        try:
            return OPTIMIZERS[self.name](parameters, **self.settings)
        except ValueError as error:  # torch's own range checks (betas, eps, momentum, ...)
            raise ConfigError(
                f"optimizer={self.name}: {error} (fix the optimizer.* settings)"
            ) from None


def read_optimizer(config: Mapping[str, Any]) -> OptimizerChoice:
    """Check the optimizer config; building waits for the model's parameters."""
    name, _, settings = choose(
        "optimizer", config, OPTIMIZERS, supplied=_INTERNAL_KNOBS,
        own_keys=("full_batch", "clip_grad_norm"),
    )  # fmt: skip
    full_batch = config.get("full_batch", False)
    require(
        isinstance(full_batch, bool),
        f"optimizer.full_batch must be true or false, got {full_batch!r}",
    )
    clip = _clip_grad_norm(config.get("clip_grad_norm"), name)
    positive("optimizer.lr", settings.get("lr", 1.0))
    # torch accepts any value for these; outside the range they make no sense
    if "momentum" in settings:  # 1 or more never converges
        fraction("optimizer.momentum", settings["momentum"], open_right=True)
    if "dampening" in settings:
        fraction("optimizer.dampening", settings["dampening"])
    if "alpha" in settings:  # RMSprop's smoothing constant
        fraction("optimizer.alpha", settings["alpha"], open_right=True)
    for key in ("tolerance_grad", "tolerance_change", "lr_decay", "initial_accumulator_value"):
        if key in settings:
            non_negative(f"optimizer.{key}", settings[key])
    _LATE_CHECKS.get(OPTIMIZERS[name], lambda settings: None)(settings)
    if OPTIMIZERS[name] is torch.optim.LBFGS and not full_batch:
        log.warning(
            "L-BFGS on mini-batches is noisy and often unstable: its curvature estimates and "
            "line search assume one fixed objective (optimizer.full_batch=true avoids this)"
        )
    choice = OptimizerChoice(name, full_batch, settings, clip)
    _probe(choice)
    return choice


def _clip_grad_norm(value: Any, name: str) -> float | None:
    """null, or a positive finite norm; L-BFGS refuses it (its line search reads the true
    gradient along the direction it chose: clipped ones would mislead it)."""
    if value is None:
        return None
    require(
        isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf,
        f"optimizer.clip_grad_norm must be null or a number above 0, got {value!r}",
    )
    require(
        OPTIMIZERS[name] is not torch.optim.LBFGS,
        "optimizer=lbfgs cannot clip gradients: its line search needs the true gradient; "
        "set optimizer.clip_grad_norm=null",
    )
    return float(value)


def _probe(choice: OptimizerChoice) -> None:
    """One step on a throwaway parameter: torch checks some settings only when it steps."""
    parameter = torch.ones(2, requires_grad=True)
    optimizer = choice.build([parameter])

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = parameter.pow(2).sum()
        loss.backward()
        return loss

    try:
        optimizer.step(closure)
    except (RuntimeError, ValueError, OverflowError) as error:
        raise ConfigError(
            f"optimizer={choice.name}: torch cannot step with these settings "
            f"({first_line(error)}); fix the optimizer.* settings"
        ) from None


@dataclass(frozen=True)
class TrainingPlan:
    """How many optimizer steps a run takes: what step-based schedules are sized by."""

    epochs: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class LRSchedule:
    """A torch scheduler plus when to step it: after each optimizer step or each epoch."""

    scheduler: Any
    interval: Literal["step", "epoch"]
    monitor: str | None = None  # the validation metric a plateau schedule reads (``loss``)
    sized_by_plan: bool = False  # its shape depends on the run's length (cosine, 1cycle)

    def step_done(self) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def epoch_done(self, val: Mapping[str, float] | None) -> None:
        """Advance an epoch-based schedule; a plateau schedule needs the epoch's validation
        metrics (None: not evaluated) to decide."""
        if self.interval != "epoch":
            return
        with warnings.catch_warnings():
            # A run resumed at an epoch's end steps the schedule for that epoch before this
            # process's first optimizer step; torch's order check cannot know it was taken.
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
            if self.monitor is None:
                self.scheduler.step()
            elif val is not None:
                self.scheduler.step(val[self.monitor])


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def _min_lr_below_base(min_lr: float, optimizer: torch.optim.Optimizer) -> None:
    non_negative("schedule.min_lr", min_lr)
    require(
        min_lr <= _base_lr(optimizer),
        f"schedule.min_lr ({min_lr}) is above optimizer.lr ({_base_lr(optimizer)}); "
        "lower schedule.min_lr or raise optimizer.lr",
    )


def constant(optimizer: torch.optim.Optimizer, plan: TrainingPlan) -> LRSchedule:
    """lr stays at optimizer.lr."""
    return LRSchedule(lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0), "epoch")


def exponential(
    optimizer: torch.optim.Optimizer,
    plan: TrainingPlan,
    decay_rate: float,
    decay_steps: int,
    staircase: bool,
) -> LRSchedule:
    """lr_t = lr * decay_rate^(t / decay_steps), t counting steps; staircase floors the exponent."""
    require(0 < decay_rate <= 1, f"schedule.decay_rate must be in (0, 1], got {decay_rate}")
    require(decay_steps >= 1, f"schedule.decay_steps must be >= 1, got {decay_steps}")

    def factor(step: int) -> float:
        exponent = step // decay_steps if staircase else step / decay_steps
        return decay_rate**exponent

    return LRSchedule(lr_scheduler.LambdaLR(optimizer, factor), "step")


def step(
    optimizer: torch.optim.Optimizer, plan: TrainingPlan, step_epochs: int, gamma: float
) -> LRSchedule:
    """lr multiplied by gamma every ``step_epochs`` epochs."""
    require(step_epochs >= 1, f"schedule.step_epochs must be >= 1, got {step_epochs}")
    require(0 < gamma <= 1, f"schedule.gamma must be in (0, 1], got {gamma}")
    return LRSchedule(lr_scheduler.StepLR(optimizer, step_size=step_epochs, gamma=gamma), "epoch")


def linear_decay(
    optimizer: torch.optim.Optimizer,
    plan: TrainingPlan,
    decrement: float,
    every_steps: int,
    min_lr: float,
) -> LRSchedule:
    """Step-length decay: lr_t = max(min_lr, lr - decrement * floor(t / every_steps))."""
    positive("schedule.decrement", decrement)
    require(every_steps >= 1, f"schedule.every_steps must be >= 1, got {every_steps}")
    _min_lr_below_base(min_lr, optimizer)
    base = _base_lr(optimizer)

    def factor(step: int) -> float:
        return max(min_lr, base - decrement * (step // every_steps)) / base

    return LRSchedule(lr_scheduler.LambdaLR(optimizer, factor), "step")


def cosine(optimizer: torch.optim.Optimizer, plan: TrainingPlan, min_lr: float) -> LRSchedule:
    """Half a cosine from optimizer.lr down to min_lr over all the run's steps."""
    _min_lr_below_base(min_lr, optimizer)
    scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=plan.total_steps, eta_min=min_lr)
    return LRSchedule(scheduler, "step", sized_by_plan=True)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, plan: TrainingPlan, warmup_fraction: float, min_lr: float
) -> LRSchedule:
    """Linear warm-up over the first ``warmup_fraction`` of the steps, then cosine to min_lr."""
    fraction("schedule.warmup_fraction", warmup_fraction, open_right=True)
    _min_lr_below_base(min_lr, optimizer)
    warmup = max(1, round(warmup_fraction * plan.total_steps)) if warmup_fraction > 0 else 0
    floor = min_lr / _base_lr(optimizer)
    decay_steps = max(1, plan.total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / decay_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LRSchedule(lr_scheduler.LambdaLR(optimizer, factor), "step", sized_by_plan=True)


def onecycle(
    optimizer: torch.optim.Optimizer,
    plan: TrainingPlan,
    pct_start: float,
    anneal_strategy: Literal["cos", "linear"],
    div_factor: float,
    final_div_factor: float,
    cycle_momentum: bool,
) -> LRSchedule:
    """1cycle: from lr/div_factor up to optimizer.lr, then down to lr/(div_factor*final_div_factor)."""
    fraction("schedule.pct_start", pct_start, open_right=True)
    # torch divides by (pct_start * total_steps - 1): the warm-up needs more than one step.
    require(
        pct_start * plan.total_steps > 1,
        f"schedule.pct_start={pct_start} leaves no warm-up step out of {plan.total_steps} "
        "steps; raise schedule.pct_start or epochs",
    )
    positive("schedule.div_factor", div_factor)
    positive("schedule.final_div_factor", final_div_factor)
    try:
        scheduler = lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=_base_lr(optimizer),
            total_steps=plan.total_steps,
            pct_start=pct_start,
            anneal_strategy=anneal_strategy,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            cycle_momentum=cycle_momentum,
        )
    except ValueError as error:
        raise ConfigError(
            f"schedule=onecycle: {error} (set schedule.cycle_momentum=false)"
        ) from None
    return LRSchedule(scheduler, "step", sized_by_plan=True)


def plateau(
    optimizer: torch.optim.Optimizer,
    plan: TrainingPlan,
    factor: float,
    patience: int,
    threshold: float,
    min_lr: float,
    monitor: str = "val_loss",
    mode: str | None = None,
) -> LRSchedule:
    """lr multiplied by ``factor`` once more than ``patience`` evaluations in a row brought no
    improvement of ``monitor`` (the validation loss by default; torch's ReduceLROnPlateau;
    evaluations are every epoch by default). The experiment checks ``monitor`` against the
    task's metrics; ``mode`` min or max, or None: inferred from the name."""
    require(0 < factor < 1, f"schedule.factor must be in (0, 1), got {factor}")
    require(patience >= 0, f"schedule.patience must be >= 0, got {patience}")
    non_negative("schedule.threshold", threshold)
    _min_lr_below_base(min_lr, optimizer)
    name, maximize = direction(monitor, mode)
    scheduler = lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max" if maximize else "min", factor=factor, patience=patience,
        threshold=threshold, min_lr=min_lr,
    )  # fmt: skip
    return LRSchedule(scheduler, "epoch", monitor=name)


SCHEDULES: dict[str, Callable[..., LRSchedule]] = {
    "constant": constant,
    "exponential": exponential,
    "step": step,
    "linear_decay": linear_decay,
    "cosine": cosine,
    "warmup_cosine": warmup_cosine,
    "onecycle": onecycle,
    "plateau": plateau,
}


def build_schedule(
    config: Mapping[str, Any], optimizer: torch.optim.Optimizer, plan: TrainingPlan
) -> LRSchedule:
    """Build the configured lr schedule around ``optimizer``."""
    _, build, settings = choose("schedule", config, SCHEDULES, supplied=("optimizer", "plan"))
    return build(optimizer, plan, **settings)
