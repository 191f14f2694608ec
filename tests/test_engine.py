"""The engine and a whole run in-process: every option trains, gd/L-BFGS stepping, early
stopping with best weights restored, divergence, reproducibility."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import TINY, compose_config, map_in_workers, train_run
from trainlab.engine import Callback, FitSettings, fit
from trainlab.optim import TrainingPlan, build_schedule

CONF = Path(__file__).resolve().parent.parent / "conf"
RANKING_LOSSES = {"pairwise", "pointwise", "listwise"}


IMAGE_ONLY = {"cnn", "resnet"}  # trained on image files in tests/test_images.py
USER_PARTS = {  # the custom options, pointed at code (examples/own_project trains its own)
    "model": ["model._target_=tests.user_parts.TinyNet"],
    "loss": ["loss._target_=torch.nn.functional.cross_entropy", "loss.tasks=[classification]"],
}


def every_option():
    for group in ("loss", "optimizer", "schedule", "regularizer", "model"):
        for path in sorted((CONF / group).glob("*.yaml")):
            if path.stem in IMAGE_ONLY:
                continue
            overrides = [f"{group}={path.stem}"]
            if path.stem == "custom":
                overrides += USER_PARTS[group]
            if path.stem in RANKING_LOSSES:
                overrides.append("dataset.task=ranking")
            yield overrides
    yield ["dataset.task=regression", "loss=huber"]
    yield ["dataset.task=ranking", "loss=mse"]


OPTIONS = list(every_option())


def _trains(overrides: list[str]) -> str | None:
    """None when a short run with ``overrides`` trains (its loss falls, its files are there);
    else what went wrong."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder)
        config = compose_config(*overrides, "dataset.train_size=512", *TINY[1:3], "epochs=4")
        metrics = train_run(config, run_dir)
        history = metrics["history"]["train_loss"]
        if metrics["status"] not in ("completed", "early_stopped"):
            return f"{metrics['status']}: {metrics.get('message')}"
        if not history[-1] < history[0]:
            return f"the training loss did not fall: {history}"
        if not (run_dir / "metrics.json").exists() or not list(run_dir.glob("events.out.*")):
            return "its metrics.json or event file is missing"
    return None


@pytest.fixture(scope="module")
def trained() -> dict[str, str | None]:
    """Every option's short run, on both cores."""
    found = map_in_workers(_trains, OPTIONS)
    return dict(zip((",".join(o) for o in OPTIONS), found, strict=True))


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda o: ",".join(o))
def test_every_option_composes_and_trains(overrides, trained):
    assert trained[",".join(overrides)] is None, trained[",".join(overrides)]


def test_gd_takes_one_full_batch_step_per_epoch(tmp_path):
    metrics = train_run(compose_config("optimizer=gd", *TINY, "epochs=5"), tmp_path)
    assert metrics["steps"] == metrics["epochs_run"] == 5
    assert metrics["batch_size"] == 256


def _linear_problem(samples=64):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, 3, generator=generator)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return inputs, targets


def _fit(
    model,
    optimizer,
    batches,
    epochs,
    evaluate_val,
    loss_fn=nn.functional.mse_loss,
    callbacks=(),
    log_every_steps=1,
    **settings,
):
    """fit() with a constant schedule, one epoch = one pass over ``batches``."""
    schedule = build_schedule({"name": "constant"}, optimizer, TrainingPlan(epochs, len(batches)))
    settings = FitSettings(epochs=epochs, log_every_steps=log_every_steps, **settings)
    return fit(
        model, loss_fn, optimizer, schedule, None, batches, len(batches), evaluate_val, settings,
        callbacks,
    )  # fmt: skip


def test_lbfgs_solves_least_squares_with_its_closure():
    inputs, targets = _linear_problem()
    model = nn.Linear(3, 1)
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=20, line_search_fn="strong_wolfe"
    )
    calls = []

    def counting_loss(outputs, targets):
        calls.append(1)
        return nn.functional.mse_loss(outputs, targets)

    with torch.no_grad():
        initial = nn.functional.mse_loss(model(inputs), targets).item()
    result = _fit(
        model, optimizer, [(inputs, targets)], 2, lambda: {"loss": 0.0}, loss_fn=counting_loss
    )
    with torch.no_grad():
        final = nn.functional.mse_loss(model(inputs), targets).item()
    assert result.steps == 2 and len(calls) > 2  # several closure evaluations per step
    assert initial > 1.0 and final < 1e-8


def test_early_stopping_stops_after_patience_and_restores_best_weights():
    inputs, targets = _linear_problem()
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    val_losses = iter([1.0, 0.5, 0.6, 0.55, 0.7, 0.1])
    snapshots = {}

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, scalars):
            snapshots[epoch] = model.weight.detach().clone()

    result = _fit(
        model, optimizer, [(inputs, targets)], 10, lambda: {"loss": next(val_losses)},
        callbacks=[Snapshot()], patience=2,
    )  # fmt: skip
    assert result.status == "early_stopped" and result.epochs_run == 4
    assert result.best_epoch == 2 and result.best_val == {"loss": 0.5}
    assert torch.equal(model.weight, snapshots[2]) and not torch.equal(model.weight, snapshots[4])


def test_early_stopping_and_restoring_watch_the_monitored_metric():
    """The best-loss epoch (2) and the best-accuracy epoch (3) differ: monitoring accuracy
    keeps epoch 3's weights and stops when accuracy stalls, not when the loss does."""
    val = [(1.0, 0.50), (0.5, 0.60), (0.6, 0.70), (0.65, 0.65), (0.7, 0.66), (0.1, 0.99)]

    def watched(**settings):
        inputs, targets = _linear_problem()
        model = nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        scores, snapshots = iter(val), {}

        class Snapshot(Callback):
            def on_epoch_end(self, epoch, scalars):
                snapshots[epoch] = model.weight.detach().clone()

        def evaluate():
            loss, accuracy = next(scores)
            return {"loss": loss, "accuracy": accuracy}

        result = _fit(
            model, optimizer, [(inputs, targets)], 10, evaluate, callbacks=[Snapshot()],
            patience=2, **settings,
        )  # fmt: skip
        return result, torch.equal(model.weight, snapshots[result.best_epoch])

    by_loss, restored = watched()
    assert (by_loss.best_epoch, by_loss.epochs_run, restored) == (2, 4, True)
    by_accuracy, restored = watched(monitor="accuracy", maximize=True)
    assert (by_accuracy.best_epoch, by_accuracy.epochs_run, restored) == (3, 5, True)
    assert by_accuracy.best_val == {"loss": 0.6, "accuracy": 0.7}
    assert by_accuracy.message.startswith("val_accuracy did not improve")


def test_min_delta_counts_small_improvements_as_none():
    inputs, targets = _linear_problem()
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    val_losses = iter([1.0, 0.99, 0.98, 0.97])
    result = _fit(
        model,
        optimizer,
        [(inputs, targets)],
        10,
        lambda: {"loss": next(val_losses)},
        patience=2,
        min_delta=0.05,
    )
    assert result.status == "early_stopped" and result.best_epoch == 1 and result.epochs_run == 3


def test_divergence_stops_the_run_with_a_clear_status(tmp_path):
    config = compose_config("optimizer=sgd", "optimizer.lr=1e6", "loss=mse", *TINY[:3], "epochs=5")
    metrics = train_run(config, tmp_path)
    assert metrics["status"] == "diverged"
    assert "lower optimizer.lr" in metrics["message"]
    assert metrics["epochs_run"] == 1


def test_same_config_twice_gives_identical_numbers(tmp_path):
    config = compose_config(*TINY, "model.dropout=0.2")
    first = train_run(config, tmp_path / "a")
    second = train_run(config, tmp_path / "b")
    for key in ("history", "val", "test", "steps", "best_epoch"):
        assert first[key] == second[key], key
    other = train_run(compose_config(*TINY, "model.dropout=0.2", "seed=1"), tmp_path / "c")
    assert other["history"] != first["history"]


def test_classification_losses_and_models_separate_on_the_default_data(tmp_path):
    """The default data is not linearly separable: an MLP beats a linear model clearly."""
    sizes = ("dataset.train_size=2000", "epochs=15")
    linear = train_run(compose_config("model=linear", *sizes), tmp_path / "linear")
    mlp = train_run(compose_config("model=mlp", *sizes), tmp_path / "mlp")
    assert linear["test"]["accuracy"] < 0.5
    assert mlp["test"]["accuracy"] > linear["test"]["accuracy"] + 0.15


class _Recorder(Callback):
    def __init__(self):
        self.logs = []

    def on_log(self, step, epoch, scalars):
        self.logs.append((step, scalars["loss"]))


def test_a_logging_interval_spanning_epochs_averages_all_its_steps():
    """Two steps per epoch, a log every three: each logged loss is the mean of its 3 steps."""
    step_values = iter(float(v) for v in range(1, 100))
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def loss_fn(outputs, targets):  # the k-th step's loss is k
        return outputs.sum() * 0 + next(step_values)

    recorder = _Recorder()
    batches = [(torch.ones(1, 1), torch.ones(1, 1))] * 2
    _fit(
        model, optimizer, batches, 3, lambda: {"loss": 1.0}, loss_fn=loss_fn,
        callbacks=[recorder], log_every_steps=3,
    )  # fmt: skip
    assert recorder.logs == [(3, pytest.approx(2.0)), (6, pytest.approx(5.0))]


def test_history_lines_up_when_evaluating_every_other_epoch(tmp_path):
    metrics = train_run(compose_config(*TINY[:3], "epochs=5", "eval_every_epochs=2"), tmp_path)
    history = metrics["history"]
    assert history["epoch"] == [1, 2, 3, 4, 5]
    assert [v is None for v in history["val_loss"]] == [True, False, True, False, False]
    assert len(history["train_loss"]) == len(history["val_accuracy"]) == 5


def test_without_restoring_best_val_and_test_describe_the_last_weights(tmp_path):
    config = compose_config(
        *TINY[:3],
        "epochs=6",
        "restore_best=false",
        "early_stopping.enabled=false",
        "optimizer.lr=0.05",
    )
    metrics = train_run(config, tmp_path)
    assert metrics["restored_best"] is False
    assert (
        metrics["val"]["loss"]
        == metrics["history"]["val_loss"][-1]
        == metrics["final"]["val"]["loss"]
    )
    assert metrics["best_val_loss"] == min(metrics["history"]["val_loss"])


def test_metrics_json_is_strict_json_after_divergence(tmp_path):
    train_run(compose_config("optimizer=sgd", "optimizer.lr=1e6", "loss=mse", *TINY), tmp_path)
    text = (tmp_path / "metrics.json").read_text()

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    metrics = json.loads(text, parse_constant=refuse)
    assert metrics["status"] == "diverged" and None in metrics["history"]["train_loss"]


def _one_step(accumulate_steps=1, clip_grad_norm=None, penalty=None, log=None):
    """One SGD step of a small MLP on one batch of 24 examples; the model after it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    inputs, targets = torch.randn(24, 3), torch.randint(0, 2, (24,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = build_schedule({"name": "constant"}, optimizer, TrainingPlan(1, 1))
    settings = FitSettings(
        epochs=1, log_every_steps=1, accumulate_steps=accumulate_steps,
        clip_grad_norm=clip_grad_norm,
    )  # fmt: skip
    callbacks = [log] if log is not None else []
    weights = [p for p in model.parameters() if p.dim() > 1]
    regularize = (lambda: penalty * sum(w.pow(2).sum() for w in weights)) if penalty else None
    fit(
        model, nn.functional.cross_entropy, optimizer, schedule, regularize,
        [(inputs, targets)], 1, lambda: {"loss": 0.0}, settings, callbacks,
    )  # fmt: skip
    return model


@pytest.mark.parametrize("penalty", [None, 0.01])
def test_accumulated_micro_batches_take_the_big_batch_step(penalty):
    whole = _one_step(penalty=penalty)
    for steps in (2, 5, 24):  # 5: micro-batches of 5, 5, 5, 5, 4 examples
        split = _one_step(accumulate_steps=steps, penalty=penalty)
        for a, b in zip(whole.parameters(), split.parameters(), strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), steps


def test_clipping_scales_the_gradient_to_the_norm_and_logs_the_norm_before():
    logged = []

    class Log(Callback):
        def on_log(self, step, epoch, scalars):
            logged.append(scalars["grad_norm"])

    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    inputs, targets = torch.randn(24, 3), torch.randint(0, 2, (24,))
    nn.functional.cross_entropy(reference(inputs), targets).backward()
    gradients = [p.grad.clone() for p in reference.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in gradients])).item()
    clipped = _one_step(clip_grad_norm=norm / 4, log=Log())
    assert logged == [pytest.approx(norm, rel=1e-6)]  # the norm before clipping
    for before, after, gradient in zip(
        reference.parameters(), clipped.parameters(), gradients, strict=True
    ):
        expected = before - 0.5 * gradient / 4  # the step of a gradient a quarter as long
        assert torch.allclose(after, expected, rtol=1e-5, atol=1e-6)
    unclipped = _one_step(clip_grad_norm=norm * 4)  # above the norm: the same step as none
    for a, b in zip(unclipped.parameters(), _one_step().parameters(), strict=True):
        assert torch.equal(a, b)
