"""Each schedule's lr trajectory against its formula; optimizer config checks."""

from __future__ import annotations

import math

import pytest
import torch

from trainlab.errors import ConfigError
from trainlab.optim import OPTIMIZERS, TrainingPlan, build_schedule, read_optimizer

BASE_LR = 0.1


def trajectory(config: dict, epochs: int = 4, steps_per_epoch: int = 5, val_losses=None):
    """The lr used at every optimizer step of a run with this schedule."""
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([parameter], lr=BASE_LR)
    schedule = build_schedule(config, optimizer, TrainingPlan(epochs, steps_per_epoch))
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step_done()
        schedule.epoch_done({"loss": val_losses[epoch] if val_losses else 1.0})
    return lrs


def test_constant():
    assert trajectory({"name": "constant"}) == pytest.approx([BASE_LR] * 20)


@pytest.mark.parametrize("staircase", [True, False])
def test_exponential(staircase):
    lrs = trajectory(
        {"name": "exponential", "decay_rate": 0.5, "decay_steps": 3, "staircase": staircase}
    )
    exponent = (lambda t: t // 3) if staircase else (lambda t: t / 3)
    assert lrs == pytest.approx([BASE_LR * 0.5 ** exponent(t) for t in range(20)])


def test_step_decays_per_epoch():
    lrs = trajectory({"name": "step", "step_epochs": 2, "gamma": 0.1}, epochs=5, steps_per_epoch=3)
    assert lrs == pytest.approx([BASE_LR * 0.1 ** (t // 3 // 2) for t in range(15)])


def test_linear_decay_subtracts_and_floors_at_min_lr():
    config = {"name": "linear_decay", "decrement": 0.03, "every_steps": 4, "min_lr": 0.02}
    lrs = trajectory(config)
    assert lrs == pytest.approx([max(0.02, BASE_LR - 0.03 * (t // 4)) for t in range(20)])
    assert lrs[-1] == pytest.approx(0.02)


def test_cosine():
    lrs = trajectory({"name": "cosine", "min_lr": 0.01})
    total = 20
    expected = [
        0.01 + (BASE_LR - 0.01) * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(20)
    ]
    assert lrs == pytest.approx(expected)


def test_warmup_cosine():
    lrs = trajectory({"name": "warmup_cosine", "warmup_fraction": 0.2, "min_lr": 0.0})
    warmup, total = 4, 20
    expected = [
        BASE_LR * (t + 1) / warmup
        if t < warmup
        else BASE_LR * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))
        for t in range(total)
    ]
    assert lrs == pytest.approx(expected)
    assert max(lrs) == pytest.approx(BASE_LR)


def test_onecycle_rises_to_lr_then_anneals():
    config = {
        "name": "onecycle",
        "pct_start": 0.25,
        "anneal_strategy": "linear",
        "div_factor": 10.0,
        "final_div_factor": 100.0,
        "cycle_momentum": False,
    }
    lrs = trajectory(config)
    # torch's OneCycleLR: phase ends at step pct_start * total - 1 = 4, then down to the last step 19.
    start, peak, end = BASE_LR / 10, BASE_LR, BASE_LR / 10 / 100
    expected = [start + (peak - start) * t / 4 for t in range(5)]
    expected += [peak + (end - peak) * (t - 4) / 15 for t in range(5, 20)]
    assert lrs == pytest.approx(expected)


def test_plateau_halves_after_patience_epochs_without_progress():
    config = {"name": "plateau", "factor": 0.5, "patience": 1, "threshold": 0.0, "min_lr": 0.0}
    lrs = trajectory(config, epochs=6, steps_per_epoch=1, val_losses=[1.0, 0.9, 0.9, 0.9, 0.9, 0.9])
    # Epoch 3 is the first bad one, epoch 4 the second (> patience): lr halves for epoch 5.
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05])


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (
            {"name": "exponential", "decay_rate": 1.5, "decay_steps": 3, "staircase": True},
            "decay_rate",
        ),
        ({"name": "step", "step_epochs": 0, "gamma": 0.5}, "step_epochs must be >= 1"),
        ({"name": "cosine", "min_lr": 1.0}, "above optimizer.lr"),
        (
            {"name": "plateau", "factor": 1.0, "patience": 1, "threshold": 0.0, "min_lr": 0.0},
            "factor",
        ),
        (
            {"name": "warmup", "min_lr": 0.0},
            "schedule=warmup: no such option; did you mean warmup_cosine?",
        ),
    ],
)
def test_bad_schedules(config, fragment):
    with pytest.raises(ConfigError) as error:
        trajectory(config)
    assert fragment in str(error.value)


def test_onecycle_needs_more_than_one_warmup_step():
    config = {
        "name": "onecycle",
        "pct_start": 0.05,
        "anneal_strategy": "cos",
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "cycle_momentum": False,
    }
    with pytest.raises(ConfigError, match="leaves no warm-up step out of 20 steps"):
        trajectory(config)


def test_onecycle_with_an_optimizer_without_momentum_says_how_to_fix_it():
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adagrad([parameter], lr=0.1)
    config = {
        "name": "onecycle",
        "pct_start": 0.3,
        "anneal_strategy": "cos",
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "cycle_momentum": True,
    }
    with pytest.raises(ConfigError, match="cycle_momentum=false"):
        build_schedule(config, optimizer, TrainingPlan(2, 2))


def test_optimizers_build_the_torch_class_with_the_configured_knobs():
    choice = read_optimizer(
        {"name": "nesterov", "full_batch": False, "lr": 0.2, "momentum": 0.8, "nesterov": True}
    )
    optimizer = choice.build([torch.zeros(1, requires_grad=True)])
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["lr"] == 0.2 and optimizer.defaults["nesterov"] is True
    assert read_optimizer({"name": "gd", "full_batch": True, "lr": 0.5}).full_batch
    assert set(OPTIMIZERS) == {
        "gd",
        "sgd",
        "momentum",
        "nesterov",
        "adam",
        "adamw",
        "rmsprop",
        "adagrad",
        "lbfgs",
    }


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"name": "adam", "lr": -1.0}, "optimizer.lr must be > 0"),
        ({"name": "adam", "lr": 0}, "optimizer.lr must be > 0"),
        ({"name": "adam", "lr": "fast"}, "optimizer.lr must be a number, got 'fast'"),
        ({"name": "adam", "lr": 0.1, "betas": 0.9}, "optimizer.betas must be a list of 2 numbers"),
        ({"name": "adam", "lr": 0.1, "betas": [1.5, 0.9]}, "Invalid beta parameter"),
        ({"name": "sgd", "lr": 0.1, "betas": [0.9, 0.9]}, "optimizer.betas is not a setting here"),
        ({"name": "sgd", "lr": 0.1, "momentum": -0.5}, "optimizer.momentum must be in [0, 1)"),
        ({"name": "momentum", "lr": 0.1, "momentum": 1.0}, "optimizer.momentum must be in [0, 1)"),
        ({"name": "adamm", "lr": 0.1}, "optimizer=adamm: no such option; did you mean adam?"),
        ({"name": "lbfgs", "lr": 1.0, "history_size": 0}, "optimizer.history_size must be >= 1"),
        ({"name": "lbfgs", "lr": 1.0, "line_search_fn": "foo"}, "must be strong_wolfe or null"),
        ({"name": "lbfgs", "lr": 1.0, "max_eval": 0}, "optimizer.max_eval must be >= 1"),
        ({"name": "adam", "lr": 0.1, "capturable": True}, "optimizer.capturable is not a setting"),
        ({"name": "sgd", "lr": 0.1, "maximize": True}, "optimizer.maximize is not a setting"),
    ],
)
def test_bad_optimizers(config, fragment):
    with pytest.raises(ConfigError) as error:
        read_optimizer(config)
    assert fragment in str(error.value)


def test_a_plateau_schedule_may_watch_a_metric_that_grows():
    """schedule.monitor=val_accuracy: the lr halves once accuracy stops growing (mode inferred:
    max), where watching the loss would have seen it fall, i.e. improve, all along."""
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([parameter], lr=BASE_LR)
    config = {"name": "plateau", "factor": 0.5, "patience": 1, "threshold": 0.0, "min_lr": 0.0}
    schedule = build_schedule({**config, "monitor": "val_accuracy"}, optimizer, TrainingPlan(6, 1))
    lrs = []
    for accuracy, loss in [(0.5, 1.0), (0.6, 0.9), (0.6, 0.8), (0.6, 0.7), (0.6, 0.6)]:
        schedule.epoch_done({"loss": loss, "accuracy": accuracy})
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([BASE_LR, BASE_LR, BASE_LR, BASE_LR / 2, BASE_LR / 2])
