"""Which metrics each task reports, and which way is better: torch-free, so that the checks,
the report and the engine read one definition."""

from __future__ import annotations

# The metric each task is judged by (the report ranks losses and errors low-first).
PRIMARY_METRIC = {"classification": "accuracy", "regression": "mse", "ranking": "ndcg"}
TASK_METRICS = {"classification": ["accuracy"], "regression": ["mse", "mae"], "ranking": ["ndcg"]}
LOWER_IS_BETTER = ("loss", "mse", "mae")


def names_for(task: str) -> list[str]:
    """The metrics reported for ``task``, loss first."""
    return ["loss", *TASK_METRICS[task]]


def larger_is_better(metric: str) -> bool:
    """``val_accuracy``, ``test_ndcg``: larger is better; losses and errors: smaller."""
    return not metric.endswith(LOWER_IS_BETTER)


def direction(monitor: str, mode: str | None) -> tuple[str, bool]:
    """``val_accuracy`` -> (``accuracy``, larger is better), ``mode`` (min or max) overruling
    the name."""
    name = monitor.removeprefix("val_")
    return name, larger_is_better(name) if mode is None else mode == "max"


def monitored(key: str, monitor: str, mode: str | None, task: str) -> tuple[str, bool]:
    """What a setting such as ``early_stopping.monitor=val_accuracy`` watches: the validation
    metric's name (``accuracy``) and whether larger is better (``mode``: min, max, or None to
    infer it from the name). Raises ValueError with the line to show."""
    names = names_for(task)
    choices = ", ".join(f"val_{name}" for name in names)
    name = monitor.removeprefix("val_")
    if not monitor.startswith("val_") or name not in names:
        raise ValueError(
            f"{key}={monitor}: the {task} task has no such validation metric; choose one of "
            f"{choices}"
        )
    if mode not in (None, "min", "max"):
        raise ValueError(f"{key.rsplit('.', 1)[0]}.mode must be min, max or null, got {mode!r}")
    return direction(monitor, mode)
