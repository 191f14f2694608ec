"""The generic training loop: train, evaluate, early-stop, keep the best weights.

It knows nothing about particular losses, datasets or optimizers. Every optimizer is stepped
with a closure (which L-BFGS needs and the others accept), schedules step themselves, and
numbers stay on the device until a logging interval or the end of an epoch reads them back.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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
    monitor: str = "loss"  # the validation metric that decides the best epoch and stopping
    maximize: bool = False  # whether larger values of it are better
    clip_grad_norm: float | None = None  # the gradients' largest global L2 norm; None: no clip
    accumulate_steps: int = 1  # micro-batches per optimizer step (one batch, split)
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


# FitState.sums, a 2 x 2 tensor on the device: rows are what is summed, columns over what.
LOSS, PENALTY = 0, 1
EPOCH, INTERVAL = 0, 1  # this epoch's steps; the steps since the last logging interval


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
    sums: torch.Tensor | None = None  # [LOSS | PENALTY, EPOCH | INTERVAL]: one add per step
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


class Callback:
    """What the engine reports; loggers override the events they use."""

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
    loop = _Loop(
        model, loss_fn, optimizer, schedule, penalty, batches, steps_per_epoch, evaluate_val,
        settings, callbacks, state or FitState(), save_checkpoint, stop_requested, reduce_mean,
    )  # fmt: skip
    return loop.run()


class _Loop:
    """One fit: epochs of steps, each epoch ended by an evaluation, early stopping and a
    checkpoint. Its state lives in ``self.state`` so that a checkpoint can carry it."""

    def __init__(
        self, model, loss_fn, optimizer, schedule, penalty, batches, steps_per_epoch,
        evaluate_val, settings, callbacks, state, save_checkpoint, stop_requested, reduce_mean,
    ) -> None:  # fmt: skip
        self.model, self.loss_fn, self.penalty = model, loss_fn, penalty
        self.optimizer, self.schedule = optimizer, schedule
        self.batches, self.steps_per_epoch = batches, steps_per_epoch
        self.evaluate_val, self.settings, self.callbacks = evaluate_val, settings, callbacks
        self.save_checkpoint, self.stop_requested = save_checkpoint, stop_requested
        self.reduce_mean = reduce_mean or (lambda values: values)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.state = state
        self.grad_norm = torch.zeros(())  # of the last step, before clipping (when clipping)
        if state.sums is None:
            state.sums = torch.zeros(2, 2, device=self.parameters[0].device)
        self.epoch_start = 0.0

    def run(self) -> FitResult:
        self.announce()
        while self._more_to_train():
            epoch = self.state.epochs_finished + 1
            self._train_epoch(epoch)
            if self.state.status == "interrupted":
                break
            self._end_epoch(epoch)
        return self._result()

    def announce(self) -> None:
        plan = TrainingPlan(self.settings.epochs, self.steps_per_epoch)
        for callback in self.callbacks:
            callback.on_fit_start(plan)

    def _more_to_train(self) -> bool:
        state = self.state
        unfinished = state.epoch_steps > 0 or state.epochs_finished < self.settings.epochs
        return state.status == "completed" and unfinished

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _checkpoint(self, mid_epoch: bool = False) -> None:
        if self.save_checkpoint is None:
            return
        if mid_epoch:
            self.state.epoch_time = time.perf_counter() - self.epoch_start
        self.save_checkpoint(self.state)

    # ---- steps ----

    def _train_epoch(self, epoch: int) -> None:
        """Steps until the epoch's batches run out, the loss diverges or a stop is requested."""
        self._begin_epoch()
        for inputs, targets in self.batches:
            self._step(inputs, targets)
            if self._stop_after_step(epoch):
                return

    def _begin_epoch(self) -> None:
        self.model.train()
        if self.state.epoch_steps == 0:  # a new epoch (not one resumed halfway)
            self.state.sums[:, EPOCH] = 0
            self.state.epoch_time = 0.0
        self.epoch_start = time.perf_counter() - self.state.epoch_time

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One optimizer step; its loss and penalty are added to the sums on the device."""
        data_loss, penalty, grad_norm = optimizer_step(
            self.model, self.loss_fn, self.optimizer, self.penalty, inputs, targets,
            self.settings.clip_grad_norm, self.settings.accumulate_steps, self.parameters,
        )  # fmt: skip
        if grad_norm is not None:
            self.grad_norm = grad_norm
        self.state.sums[LOSS] += data_loss
        if penalty is not None:
            self.state.sums[PENALTY] += penalty
        self._step_taken()

    def _step_taken(self) -> None:
        """Count the step (its numbers are in the sums) and let the lr schedule follow."""
        self.state.step += 1
        self.state.epoch_steps += 1
        self.state.interval_steps += 1
        self.schedule.step_done()

    def _stop_after_step(self, epoch: int) -> bool:
        """Log at the interval (and stop on divergence), stop on request (after a
        checkpoint), or checkpoint mid-epoch when one is due."""
        state, step = self.state, self.state.step
        if step % self.settings.log_every_steps == 0 and self._log_interval(epoch):
            return True
        if self.stop_requested():
            self._checkpoint(mid_epoch=True)
            state.status, state.message = "interrupted", f"stopped after step {step}"
            return True
        every = self.settings.checkpoint_every_steps
        if every is not None and step % every == 0 and state.epoch_steps < self.steps_per_epoch:
            self._checkpoint(mid_epoch=True)
        return False

    def _log_interval(self, epoch: int) -> bool:
        """Report the interval's mean loss and penalty (one read-back); True if it diverged."""
        state = self.state
        values = torch.cat([state.sums[:, INTERVAL], self._logged_grad_norm().reshape(1)])
        loss_total, penalty_total, grad_norm = self.reduce_mean(values).tolist()
        loss = loss_total / state.interval_steps
        penalty = penalty_total / state.interval_steps
        scalars = {"loss": loss, "penalty": penalty, "lr": self._lr(), "grad_norm": grad_norm}
        for callback in self.callbacks:
            callback.on_log(state.step, epoch, scalars)
        state.sums[:, INTERVAL] = 0
        state.interval_steps = 0
        if math.isfinite(loss + penalty):
            return False
        state.status = "diverged"
        state.message = _diverged("training loss", loss, epoch, state.step, self._lr())
        return True

    def _logged_grad_norm(self) -> torch.Tensor:
        """The last step's gradient norm (before clipping, when clipping)."""
        clipped = self.settings.clip_grad_norm is not None
        return self.grad_norm if clipped else gradient_norm(self.parameters)

    # ---- the end of an epoch ----

    def _end_epoch(self, epoch: int) -> None:
        """Epoch means, validation, early stopping, the epoch's report, then its checkpoint."""
        state = self.state
        means = self.reduce_mean(state.sums[:, EPOCH] / state.epoch_steps)
        train_loss, train_penalty = means.tolist()
        state.epoch_seconds.append(time.perf_counter() - self.epoch_start)  # tolist() synced
        state.epoch_steps = 0
        scalars = {"train_loss": train_loss, "train_penalty": train_penalty, "lr": self._lr()}
        scalars["step"] = state.step
        if state.status == "completed" and not math.isfinite(train_loss + train_penalty):
            state.status = "diverged"
            state.message = _diverged("training loss", train_loss, epoch, state.step, self._lr())
        val = self._validate(epoch, scalars)
        scalars["epoch"] = epoch
        state.rows.append(scalars)
        state.epochs_finished = epoch
        if state.status == "completed":
            self.schedule.epoch_done(val)
            self._stop_early()
        # Report, then checkpoint: a resume drops whatever was logged after its checkpoint.
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, scalars)
        self._checkpoint()
        if self.stop_requested() and state.status == "completed" and epoch < self.settings.epochs:
            state.status, state.message = "interrupted", f"stopped after epoch {epoch}"

    def _validate(self, epoch: int, scalars: dict[str, float]) -> dict[str, float] | None:
        """Evaluate when due; keep the best weights (to restore at the end)."""
        state, settings = self.state, self.settings
        due = epoch % settings.eval_every_epochs == 0 or epoch == settings.epochs
        if state.status != "completed" or not due:
            return None
        val = state.last_val = self.evaluate_val()
        scalars.update({f"val_{name}": value for name, value in val.items()})
        if not math.isfinite(val["loss"]):
            state.status = "diverged"
            state.message = _diverged("validation loss", val["loss"], epoch, state.step, self._lr())
        elif state.best_val is None or self._improves(val, state.best_val):
            state.best_val, state.best_epoch, state.stale_evaluations = val, epoch, 0
            if settings.restore_best:  # kept only to be restored at the end
                weights = self.model.state_dict().items()
                state.best_state = {k: v.detach().clone() for k, v in weights}
        else:
            state.stale_evaluations += 1
        return val

    def _improves(self, val: dict[str, float], best: dict[str, float]) -> bool:
        """Whether ``val`` beats ``best`` on the monitored metric by more than min_delta."""
        monitor, margin = self.settings.monitor, self.settings.min_delta
        if self.settings.maximize:
            return val[monitor] > best[monitor] + margin
        return val[monitor] < best[monitor] - margin

    def _stop_early(self) -> None:
        state, settings = self.state, self.settings
        if settings.patience is not None and state.stale_evaluations >= settings.patience:
            state.status = "early_stopped"
            state.message = (
                f"val_{settings.monitor} did not improve by more than {settings.min_delta:g} "
                f"for {state.stale_evaluations} evaluation(s); best was epoch {state.best_epoch}"
            )

    def _result(self) -> FitResult:
        state = self.state
        restore = self.settings.restore_best and state.best_state is not None
        if state.status != "interrupted" and restore:
            self.model.load_state_dict(state.best_state)
        names = list(dict.fromkeys(name for row in state.rows for name in row))
        history = {name: [row.get(name) for row in state.rows] for name in names}  # None: not run
        result = FitResult(
            state.status, state.message, state.epochs_finished, state.step, state.best_epoch,
            state.best_val, state.last_val, history, state.epoch_seconds,
        )  # fmt: skip
        for callback in self.callbacks:
            callback.on_fit_end(result)
        return result


class Step(NamedTuple):
    """What one optimizer step saw (its first evaluation, of L-BFGS's several), on the device:
    the data loss, the penalty, and the gradient norm before clipping (when clipping)."""

    data_loss: torch.Tensor
    penalty: torch.Tensor | None
    grad_norm: torch.Tensor | None


def optimizer_step(
    model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer, penalty: Penalty | None,
    inputs: torch.Tensor, targets: torch.Tensor, clip_grad_norm: float | None,
    accumulate_steps: int, parameters: Sequence[torch.Tensor],
) -> Step:  # fmt: skip
    """One step of ``optimizer`` on a batch, through a closure as L-BFGS needs: the training
    loop's step and the lr probe's."""
    seen: list[Step] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        data_loss, penalty_value = backward(
            model, loss_fn, penalty, inputs, targets, accumulate_steps
        )
        norm = None
        if clip_grad_norm is not None:  # the norm logged is the one before clipping
            norm = torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        if not seen:
            seen.append(Step(data_loss, penalty_value, norm))
        return data_loss if penalty_value is None else data_loss + penalty_value

    optimizer.step(closure)
    return seen[0]


def backward(
    model: nn.Module, loss_fn: LossFn, penalty: Penalty | None, inputs: torch.Tensor,
    targets: torch.Tensor, accumulate_steps: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """The gradient of the batch's loss plus penalty; both values, detached. With
    ``accumulate_steps`` > 1, over micro-batches: each one's mean loss weighted by its share of
    the batch, so that the sum is the batch's mean and its gradient the batch's (exactly so for
    losses that average over examples); the penalty is added once, with the last (the weights
    do not move between micro-batches)."""
    count = min(accumulate_steps, len(inputs))  # a short last batch: never an empty part
    if count == 1:  # the common case: one forward, one backward
        data_loss = loss_fn(model(inputs), targets)
        penalty_value = penalty() if penalty is not None else None
        (data_loss if penalty_value is None else data_loss + penalty_value).backward()
        return data_loss.detach(), None if penalty_value is None else penalty_value.detach()
    parts = zip(inputs.tensor_split(count), targets.tensor_split(count), strict=True)
    data_loss, penalty_value = torch.zeros((), device=inputs.device), None
    for index, (part_inputs, part_targets) in enumerate(parts):
        last = index == count - 1
        with _gradients_kept_local(model, not last):
            share = len(part_inputs) / len(inputs)
            part_loss = loss_fn(model(part_inputs), part_targets) * share
            penalty_value = penalty() if last and penalty is not None else None
            (part_loss if penalty_value is None else part_loss + penalty_value).backward()
        data_loss = data_loss + part_loss.detach()
    return data_loss, None if penalty_value is None else penalty_value.detach()


def _gradients_kept_local(model: nn.Module, local: bool) -> Any:
    """Data-parallel: gradients stay on each process until the step's last micro-batch, whose
    backward averages the sum over the processes (DistributedDataParallel.no_sync)."""
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if local and no_sync is not None else contextlib.nullcontext()
