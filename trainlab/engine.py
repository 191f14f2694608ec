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
from typing import Any, Protocol

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
    checkpoint_every_steps: int | None = None  # also checkpoint mid-epoch every N steps


@dataclass
class FitResult:
    status: str  # completed | early_stopped | diverged | interrupted
    message: str
    epochs_run: int
    steps: int
    best_epoch: int | None
    best_val: dict[str, float] | None  # validation metrics at the best epoch
    last_val: dict[str, float] | None  # at the last evaluation
    history: dict[str, list[float | None]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)  # training time of each epoch


@dataclass
class FitState:
    """Everything fit() changes besides the model, optimizer, schedule and data order.

    A checkpoint saves it with those, so a resumed fit continues exactly where it stopped,
    even mid-epoch.
    """

    epochs_finished: int = 0
    step: int = 0
    epoch_steps: int = 0  # steps taken in the unfinished epoch
    epoch_time: float = 0.0  # seconds of training spent in the unfinished epoch
    interval_steps: int = 0  # steps since the last logging interval
    # Running sums on the device, rows [loss, penalty] x columns [this epoch, since the last
    # log]: one add per step, read back only at a logging interval or the end of an epoch.
    sums: torch.Tensor | None = None
    rows: list[dict[str, float]] = field(default_factory=list)  # one per finished epoch
    epoch_seconds: list[float] = field(default_factory=list)
    last_val: dict[str, float] | None = None
    best_val: dict[str, float] | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stale_evaluations: int = 0
    status: str = "completed"
    message: str = ""

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> FitState:
        loaded = cls(**state)
        if loaded.sums is not None:
            loaded.sums = loaded.sums.to(device)
        if loaded.best_state is not None:
            loaded.best_state = {k: v.to(device) for k, v in loaded.best_state.items()}
        return loaded


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


def _never() -> bool:
    return False


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
    *,
    state: FitState | None = None,
    save_checkpoint: Callable[[FitState], None] | None = None,
    stop_requested: Callable[[], bool] = _never,
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FitResult:
    """Train ``model`` for ``settings.epochs`` passes over ``batches``; see :class:`FitResult`.

    ``state`` continues a checkpointed fit (``batches`` must resume its data order too).
    ``save_checkpoint`` is called after every epoch, every ``checkpoint_every_steps`` steps,
    and when ``stop_requested()`` turns true after a step; then the fit ends ``interrupted``.
    ``reduce_mean`` averages the numbers read back over data-parallel processes.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    device = parameters[0].device
    state = state or FitState()
    if state.sums is None:
        state.sums = torch.zeros(2, 2, device=device)
    sums = state.sums
    every = settings.checkpoint_every_steps
    _emit(callbacks, "on_fit_start", TrainingPlan(settings.epochs, steps_per_epoch))

    def checkpoint(epoch_start: float | None = None) -> None:
        if save_checkpoint is not None:
            if epoch_start is not None:
                state.epoch_time = time.perf_counter() - epoch_start
            save_checkpoint(state)

    while state.status == "completed" and (
        state.epoch_steps > 0 or state.epochs_finished < settings.epochs
    ):
        epoch = state.epochs_finished + 1
        model.train()
        if state.epoch_steps == 0:
            sums[:, 0] = 0
            state.epoch_time = 0.0
        epoch_start = time.perf_counter() - state.epoch_time
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
            sums[0] += reported[0]
            if penalty is not None:
                sums[1] += reported[1]
            state.step += 1
            state.epoch_steps += 1
            state.interval_steps += 1
            step = state.step
            schedule.step_done()
            if step % settings.log_every_steps == 0:
                values = torch.cat([sums[:, 1], gradient_norm(parameters).reshape(1)])
                if reduce_mean is not None:
                    values = reduce_mean(values)
                loss_total, penalty_total, grad_norm = values.tolist()
                loss = loss_total / state.interval_steps
                penalty_mean = penalty_total / state.interval_steps
                lr = optimizer.param_groups[0]["lr"]
                scalars = {"loss": loss, "penalty": penalty_mean, "lr": lr, "grad_norm": grad_norm}
                _emit(callbacks, "on_log", step, epoch, scalars)
                sums[:, 1] = 0
                state.interval_steps = 0
                if not math.isfinite(loss + penalty_mean):
                    state.status = "diverged"
                    state.message = _diverged("training loss", loss, epoch, step, lr)
                    break
            if stop_requested():
                checkpoint(epoch_start)
                state.status, state.message = "interrupted", f"stopped after step {step}"
                break
            if every is not None and step % every == 0 and state.epoch_steps < steps_per_epoch:
                checkpoint(epoch_start)
        if state.status == "interrupted":
            break

        step = state.step
        epoch_means = sums[:, 0] / state.epoch_steps
        if reduce_mean is not None:
            epoch_means = reduce_mean(epoch_means)
        train_loss, train_penalty = epoch_means.tolist()
        train_time = time.perf_counter() - epoch_start  # .tolist() above waited for the device
        lr = optimizer.param_groups[0]["lr"]
        scalars = {
            "train_loss": train_loss,
            "train_penalty": train_penalty,
            "lr": lr,
            "step": step,
        }
        state.epoch_seconds.append(train_time)
        state.epoch_steps = 0
        if state.status == "completed" and not math.isfinite(train_loss + train_penalty):
            state.status = "diverged"
            state.message = _diverged("training loss", train_loss, epoch, step, lr)

        val: dict[str, float] | None = None
        if state.status == "completed" and (
            epoch % settings.eval_every_epochs == 0 or epoch == settings.epochs
        ):
            val = state.last_val = evaluate_val()
            scalars.update({f"val_{name}": value for name, value in val.items()})
            if not math.isfinite(val["loss"]):
                state.status = "diverged"
                state.message = _diverged("validation loss", val["loss"], epoch, step, lr)
            elif (
                state.best_val is None or val["loss"] < state.best_val["loss"] - settings.min_delta
            ):
                state.best_val, state.best_epoch, state.stale_evaluations = val, epoch, 0
                if settings.restore_best:  # kept only to be restored at the end
                    state.best_state = {
                        k: v.detach().clone() for k, v in model.state_dict().items()
                    }
            else:
                state.stale_evaluations += 1
        scalars["epoch"] = epoch
        state.rows.append(scalars)
        state.epochs_finished = epoch
        if state.status == "completed":
            schedule.epoch_done(val["loss"] if val is not None else None)
            if settings.patience is not None and state.stale_evaluations >= settings.patience:
                state.status = "early_stopped"
                state.message = (
                    f"validation loss did not improve by more than {settings.min_delta:g} for "
                    f"{state.stale_evaluations} evaluation(s); best was epoch {state.best_epoch}"
                )
        # Report, then checkpoint: a resume drops whatever was logged after its checkpoint.
        _emit(callbacks, "on_epoch_end", epoch, scalars)
        checkpoint()
        if stop_requested() and state.status == "completed" and epoch < settings.epochs:
            state.status, state.message = "interrupted", f"stopped after epoch {epoch}"

    if state.status != "interrupted" and settings.restore_best and state.best_state is not None:
        model.load_state_dict(state.best_state)
    rows = state.rows
    names = list(dict.fromkeys(name for row in rows for name in row))
    history = {name: [row.get(name) for row in rows] for name in names}  # None: not evaluated
    result = FitResult(
        state.status,
        state.message,
        state.epochs_finished,
        state.step,
        state.best_epoch,
        state.best_val,
        state.last_val,
        history,
        state.epoch_seconds,
    )
    _emit(callbacks, "on_fit_end", result)
    return result
