"""The generic training loop: train, evaluate, early-stop, keep the best weights.

It knows nothing about particular losses, datasets or optimizers. Every optimizer is stepped
with a closure (which L-BFGS needs and the others accept), schedules step themselves, and
numbers stay on the device until a logging interval or the end of an epoch reads them back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from trainlab.losses import LossFn
from trainlab.optim import LRSchedule, TrainingPlan
from trainlab.regularizers import Penalty


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    log_every_steps: int = 10
    eval_every_epochs: int = 1
    patience: int | None = None  # evaluations without improvement before stopping; None: never
    min_delta: float = 0.0
    restore_best: bool = True


@dataclass
class FitResult:
    status: str  # completed | early_stopped | diverged
    message: str
    epochs_run: int
    steps: int
    best_epoch: int | None
    best_val: dict[str, float] | None  # validation metrics at the best epoch
    last_val: dict[str, float] | None  # at the last evaluation
    history: dict[str, list[float | None]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)  # training time of each epoch


class Callback(Protocol):
    """What the engine reports; loggers implement any of these."""

    def on_fit_start(self, plan: TrainingPlan) -> None: ...
    def on_log(self, step: int, epoch: int, scalars: dict[str, float]) -> None: ...
    def on_epoch_end(self, epoch: int, scalars: dict[str, float]) -> None: ...
    def on_fit_end(self, result: FitResult) -> None: ...


def gradient_norm(parameters: list[nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of all gradients (as clip_grad_norm_ computes it), kept on the device."""
    norms = [torch.linalg.vector_norm(p.grad) for p in parameters if p.grad is not None]
    if not norms:
        return torch.zeros((), device=parameters[0].device)
    return torch.linalg.vector_norm(torch.stack(norms))


def _emit(callbacks: Sequence[Callback], event: str, *args) -> None:
    for callback in callbacks:
        handler = getattr(callback, event, None)
        if handler is not None:
            handler(*args)


def _diverged(name: str, value: float, epoch: int, step: int, lr: float) -> str:
    return (
        f"{name} became {value} at epoch {epoch}, step {step}: the run diverged "
        f"(lower optimizer.lr, now {lr:g}, or pick a gentler schedule)"
    )


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    penalty: Penalty | None,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps_per_epoch: int,
    evaluate_val: Callable[[], dict[str, float]],
    settings: FitSettings,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` for ``settings.epochs`` passes over ``batches``; see :class:`FitResult`."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    device = parameters[0].device
    rows: list[dict[str, float]] = []  # one per epoch; becomes the history at the end
    epoch_seconds: list[
        float
    ] = []  # training time per epoch (kept out of the deterministic history)
    last_val: dict[str, float] | None = None
    best_val: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int | None = None
    stale_evaluations = 0
    step = epoch = 0
    status, message = "completed", ""
    _emit(callbacks, "on_fit_start", TrainingPlan(settings.epochs, steps_per_epoch))

    # Running sums on the device, [this epoch, since the last log]: one add per step, read back
    # only at a logging interval or the end of an epoch. A logging interval may span epochs.
    loss_sums = torch.zeros(2, device=device)
    penalty_sums = torch.zeros(2, device=device)
    interval_steps = 0
    while status == "completed" and epoch < settings.epochs:
        epoch += 1
        model.train()
        loss_sums[0] = penalty_sums[0] = 0
        epoch_steps = 0
        epoch_start = time.perf_counter()
        for inputs, targets in batches:
            reported: list[torch.Tensor] = []

            def closure(inputs=inputs, targets=targets, reported=reported) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                data_loss = loss_fn(model(inputs), targets)
                total = data_loss
                if penalty is not None:
                    penalty_value = penalty()
                    total = data_loss + penalty_value
                total.backward()
                if not reported:  # L-BFGS evaluates several times; report the step's first value
                    reported.append(data_loss.detach())
                    if penalty is not None:
                        reported.append(penalty_value.detach())
                return total

            optimizer.step(closure)
            loss_sums += reported[0]
            if penalty is not None:
                penalty_sums += reported[1]
            step += 1
            epoch_steps += 1
            interval_steps += 1
            schedule.step_done()
            if step % settings.log_every_steps == 0:
                values = torch.stack([loss_sums[1], penalty_sums[1], gradient_norm(parameters)])
                loss_total, penalty_total, grad_norm = values.tolist()
                loss, penalty_mean = loss_total / interval_steps, penalty_total / interval_steps
                lr = optimizer.param_groups[0]["lr"]
                scalars = {"loss": loss, "penalty": penalty_mean, "lr": lr, "grad_norm": grad_norm}
                _emit(callbacks, "on_log", step, epoch, scalars)
                loss_sums[1] = penalty_sums[1] = 0
                interval_steps = 0
                if not math.isfinite(loss + penalty_mean):
                    status, message = "diverged", _diverged("training loss", loss, epoch, step, lr)
                    break

        train_loss, train_penalty = (
            torch.stack([loss_sums[0], penalty_sums[0]]) / epoch_steps
        ).tolist()
        train_time = time.perf_counter() - epoch_start  # .tolist() above waited for the device
        lr = optimizer.param_groups[0]["lr"]
        scalars = {
            "train_loss": train_loss,
            "train_penalty": train_penalty,
            "lr": lr,
            "step": step,
        }
        epoch_seconds.append(train_time)
        if status == "completed" and not math.isfinite(train_loss + train_penalty):
            status, message = "diverged", _diverged("training loss", train_loss, epoch, step, lr)

        val: dict[str, float] | None = None
        if status == "completed" and (
            epoch % settings.eval_every_epochs == 0 or epoch == settings.epochs
        ):
            val = last_val = evaluate_val()
            scalars.update({f"val_{name}": value for name, value in val.items()})
            if not math.isfinite(val["loss"]):
                status, message = (
                    "diverged",
                    _diverged("validation loss", val["loss"], epoch, step, lr),
                )
            elif best_val is None or val["loss"] < best_val["loss"] - settings.min_delta:
                best_val, best_epoch, stale_evaluations = val, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale_evaluations += 1
        scalars["epoch"] = epoch
        rows.append(scalars)
        _emit(callbacks, "on_epoch_end", epoch, scalars)
        if status != "completed":
            break
        schedule.epoch_done(val["loss"] if val is not None else None)
        if settings.patience is not None and stale_evaluations >= settings.patience:
            status = "early_stopped"
            message = (
                f"validation loss did not improve by more than {settings.min_delta:g} for "
                f"{stale_evaluations} evaluation(s); best was epoch {best_epoch}"
            )

    if settings.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    names = list(dict.fromkeys(name for row in rows for name in row))
    history = {name: [row.get(name) for row in rows] for name in names}  # None: not evaluated
    result = FitResult(
        status, message, epoch, step, best_epoch, best_val, last_val, history, epoch_seconds
    )
    _emit(callbacks, "on_fit_end", result)
    return result
