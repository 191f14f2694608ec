"""The learning-rate range test (Smith, 2017; fastai's ``lr_find``): ``trainlab mode=lr_find``.

One short probe instead of a sweep: the lr grows exponentially from ``lr_find.min_lr`` to
``lr_find.max_lr`` over ``lr_find.steps`` mini-batches of the run's own model, loss, optimizer
and data, and the training loss is recorded at each step. The probe stops early once the
smoothed loss exceeds ``lr_find.divergence`` times its best. It is a probe, not a run: it keeps
no checkpoint, restores nothing, and is never resumed or ranked among runs.

The suggestion, by the steepest-descent rule: the lr where the smoothed loss falls fastest
against log(lr), looking only at the part of the curve before the loss is lowest (where a
larger lr still helps). With fewer than three points there, a tenth of the lr of the lowest
loss (fastai's older rule). The lr schedule plays no part: the probe sets the lr itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch

from trainlab.engine import optimizer_step
from trainlab.losses import LossFn
from trainlab.regularizers import Penalty
from trainlab.settings import positive, require

STEEPEST = "steepest descent of the smoothed loss against log(lr), before its minimum"
TENTH_OF_MINIMUM = "a tenth of the lr of the lowest smoothed loss"


@dataclass(frozen=True)
class ProbeSettings:
    min_lr: float = 1e-6
    max_lr: float = 10.0
    steps: int = 200
    smoothing: float = 0.9  # weight of the past in the loss's moving average
    divergence: float = 4.0  # stop once the smoothed loss exceeds this many times its best


def read_probe_settings(min_lr: float, max_lr: float, steps: int, smoothing: float,
                        divergence: float) -> ProbeSettings:  # fmt: skip
    positive("lr_find.min_lr", min_lr)
    require(max_lr > min_lr, f"lr_find.max_lr must be above lr_find.min_lr, got {max_lr}")
    require(max_lr < math.inf, "lr_find.max_lr must be finite")
    require(steps >= 5, f"lr_find.steps must be >= 5, got {steps}")
    require(0 <= smoothing < 1, f"lr_find.smoothing must be in [0, 1), got {smoothing}")
    require(divergence > 1, f"lr_find.divergence must be above 1, got {divergence}")
    return ProbeSettings(min_lr, max_lr, steps, smoothing, divergence)


@dataclass
class Curve:
    """What the probe saw, a point per step."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped_early: bool = False  # the loss ran away
    stopped_on_request: bool = False  # Ctrl-C or SIGTERM: the curve so far still suggests

    def suggestion(self) -> tuple[float | None, str]:
        """The suggested lr and the rule that chose it (None: no finite loss was seen). The
        slope at each point is taken across a quarter of a decade of lr on either side, so
        that the noise of single steps does not pass for a descent."""
        if not self.smoothed:
            return None, "no step gave a finite loss"
        lowest = min(range(len(self.smoothed)), key=self.smoothed.__getitem__)
        decades = max(math.log10(self.lrs[-1] / self.lrs[0]), 1e-12)
        reach = max(1, round((len(self.lrs) - 1) / decades / 4))
        if lowest < 2 * reach:
            return self.lrs[lowest] / 10, TENTH_OF_MINIMUM
        logs = [math.log10(lr) for lr in self.lrs]
        values = self.smoothed
        slopes = {
            i: (values[i + reach] - values[i - reach]) / (logs[i + reach] - logs[i - reach])
            for i in range(reach, lowest + 1 - reach)
        }
        steepest = min(slopes, key=slopes.__getitem__)
        return self.lrs[steepest], STEEPEST


def lr_at(step: int, settings: ProbeSettings) -> float:
    """The lr of the probe's ``step`` (0-based): exponential from min_lr to max_lr."""
    ratio = settings.max_lr / settings.min_lr
    return settings.min_lr * ratio ** (step / (settings.steps - 1))


def probe(
    model: torch.nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    penalty: Penalty | None,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    settings: ProbeSettings,
    on_point: Callable[[int, float, float, float], None] = lambda *point: None,
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
    clip_grad_norm: float | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    accumulate_steps: int = 1,
) -> Curve:
    """Step ``optimizer`` at growing lrs over ``batches`` (cycled); the curve it saw.
    ``on_point(step, lr, loss, smoothed)`` after each step; ``reduce_mean`` averages the loss
    over data-parallel processes; ``clip_grad_norm`` and ``accumulate_steps`` step as the run
    would; a stop request
    (Ctrl-C) ends the probe after the step, with the curve so far."""
    curve, average, best = Curve(), 0.0, math.inf
    model.train()
    for step, (inputs, targets) in zip(range(settings.steps), _forever(batches), strict=False):
        lr = lr_at(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = optimizer_step(
            model, loss_fn, optimizer, penalty, inputs, targets, clip_grad_norm,
            accumulate_steps, list(model.parameters()),
        ).data_loss  # fmt: skip
        value = (reduce_mean(loss.reshape(1)) if reduce_mean else loss).item()
        if not math.isfinite(value):
            curve.stopped_early = True
            break
        average = settings.smoothing * average + (1 - settings.smoothing) * value
        smoothed = average / (1 - settings.smoothing ** (step + 1))  # without the start's bias
        curve.lrs.append(lr)
        curve.losses.append(value)
        curve.smoothed.append(smoothed)
        on_point(step, lr, value, smoothed)
        best = min(best, smoothed)
        if smoothed > settings.divergence * best:
            curve.stopped_early = True
            break
        if stop_requested():
            curve.stopped_on_request = True
            break
    return curve


def _forever(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from batches


def plot(file: Path | IO[bytes], curve: Curve, suggested: float | None, title: str) -> None:
    """The loss against the lr on a log axis, smoothed over raw, the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2), layout="constrained")
    axis.plot(curve.lrs, curve.losses, color="#56B4E9", linewidth=0.8, label="loss per step")
    axis.plot(curve.lrs, curve.smoothed, color="#0072B2", linewidth=1.8, label="smoothed")
    if suggested is not None:
        axis.axvline(suggested, color="#D55E00", linestyle="--", linewidth=1.2)
        axis.annotate(
            f"suggested lr {suggested:.3g}", (suggested, 0.95), xycoords=("data", "axes fraction"),
            xytext=(4, 0), textcoords="offset points", color="#D55E00", va="top",
        )  # fmt: skip
    finite = [value for value in curve.smoothed if math.isfinite(value)]
    if finite:  # the divergence at the end would squash the part that matters
        low, high = min(curve.losses + finite), 1.5 * max(finite[: max(1, len(finite) // 2)])
        axis.set_ylim(low - 0.05 * abs(low), max(high, low + 1e-6))
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="lower left", fontsize=8, frameon=False)
    figure.savefig(file, dpi=110, format="png")
    plt.close(figure)
