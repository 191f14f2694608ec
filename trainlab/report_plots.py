"""trainlab-report's pictures: what a sweep found, drawn as a researcher would.

- ``sensitivity_<metric>.png``: the ranked metric against each swept numeric parameter (log
  axis when its values are log-spaced), one line per value of the other swept keys, the mean
  over seeds with a band of one standard deviation (the learning-rate sensitivity plot of
  DeepOBS and AlgoPerf).
- ``curves_val_<metric>.png``: learning curves of the task's common metric, and each loss's own
  loss in a panel of its own (a hinge loss and a cross-entropy are not on one scale).
- ``heatmap_<metric>.png``: two swept keys, the metric's mean in each cell, and the number of
  seeds in the title.

Colours are Okabe and Ito's colour-blind-safe set, each line also has its own dash pattern,
legends sit outside the axes, and epochs get whole-number ticks. Every file is named after
the metric it shows, so ranking by another metric adds files rather than replacing them.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from trainlab.report import Group

# Okabe & Ito (2008), without the yellow that vanishes on white.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
DASHES = ("-", "--", ":", "-.")  # 7 colours x 4 dashes: 28 lines before a style repeats


def style(index: int) -> dict[str, Any]:
    """The index-th line's colour and dash pattern."""
    return {"color": COLOURS[index % len(COLOURS)], "linestyle": DASHES[index % len(DASHES)]}


def plot_files(metric: str, primary: str) -> list[str]:
    """Every file a report ranked by ``metric`` may write, in the order it writes them."""
    return [f"sensitivity_{metric}.png", f"curves_val_{primary}.png", f"heatmap_{metric}.png"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=110, bbox_inches="tight")  # the outside legend is kept whole
    _pyplot().close(figure)


def _legend_outside(figure: Figure, axes: Sequence[Axes], title: str) -> None:
    """One legend for all panels, right of them, so it covers no data or labels."""
    entries: dict[str, Any] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    labels, handles = list(entries), list(entries.values())
    if handles:
        figure.legend(
            handles, labels, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5),
            fontsize=8, title_fontsize=8, frameon=False,
        )  # fmt: skip


# ---- sensitivity ---------------------------------------------------------------------------


def as_number(text: str) -> float | None:
    if text.strip().lower() in ("true", "false", "nan", "inf", "-inf"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def log_spaced(values: Sequence[float]) -> bool:
    """Whether a parameter's values read best on a log axis: positive, spanning a factor of
    ten or more, and more even in their logarithms than as they are."""
    values = sorted(set(values))
    if len(values) < 2 or values[0] <= 0 or values[-1] / values[0] < 10:
        return False
    if len(values) == 2:
        return True

    def unevenness(points: list[float]) -> float:
        gaps = [b - a for a, b in itertools.pairwise(points)]
        return statistics.pstdev(gaps) / statistics.fmean(gaps)

    return unevenness([math.log(v) for v in values]) <= unevenness(values)


def numeric_keys(keys: list[str], groups: Sequence[Group]) -> list[str]:
    """The swept keys whose every value is a number (the ones a sensitivity plot can use)."""
    return [
        key
        for index, key in enumerate(keys)
        if len({g.params[index] for g in groups}) > 1
        and all(as_number(g.params[index]) is not None for g in groups)
    ]


def plot_sensitivity(path: Path, keys: list[str], groups: Sequence[Group], metric: str) -> bool:
    """One panel per numeric swept key; False (nothing written) when there is none."""
    axes_keys = numeric_keys(keys, groups)
    if not axes_keys:
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(
        1, len(axes_keys), figsize=(5.2 * len(axes_keys), 4.2), layout="constrained"
    )
    axes = list(axes) if len(axes_keys) > 1 else [axes]
    seeds = _seed_counts(groups, metric)
    for axis, key in zip(axes, axes_keys, strict=True):
        _sensitivity_panel(axis, keys, key, groups, metric)
    figure.suptitle(f"{metric} against each swept parameter: mean ± std over {seeds}")
    _legend_outside(figure, axes, "other keys" if len(keys) > 1 else "")
    _save(figure, path)
    return True


def _sensitivity_panel(
    axis: Axes, keys: list[str], key: str, groups: Sequence[Group], metric: str
) -> None:
    position = keys.index(key)
    lines: dict[tuple[str, ...], list[tuple[float, Any]]] = {}
    for group in groups:
        others = tuple(f"{k}={v}" for k, v in zip(keys, group.params, strict=True) if k != key)
        summary = group.summary(metric)
        if summary is not None:
            x = as_number(group.params[position])
            lines.setdefault(others, []).append((x, summary))
    for index, (others, points) in enumerate(sorted(lines.items())):
        points.sort(key=lambda point: point[0])
        xs = [x for x, _ in points]
        means = [s.mean for _, s in points]
        axis.plot(
            xs, means, marker="o", markersize=4, label=",".join(others) or metric, **style(index)
        )
        spreads = [s.std or 0.0 for _, s in points]
        low = [m - s for m, s in zip(means, spreads, strict=True)]
        high = [m + s for m, s in zip(means, spreads, strict=True)]
        axis.fill_between(xs, low, high, color=style(index)["color"], alpha=0.15, linewidth=0)
    values = [as_number(g.params[position]) for g in groups]
    if log_spaced([v for v in values if v is not None]):
        axis.set_xscale("log")
    axis.set_xlabel(key)
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)


def _seed_counts(groups: Sequence[Group], metric: str) -> str:
    counts = sorted({len(g.values(metric)) for g in groups} - {0}) or [0]
    low, high = counts[0], counts[-1]
    seeds = f"{low}" if low == high else f"{low} to {high}"
    return f"{seeds} seed{'s' if high != 1 else ''}"


# ---- learning curves -----------------------------------------------------------------------


def plot_curves(
    path: Path, groups: Sequence[Group], keys: list[str], primary: str, curve: Any
) -> bool:
    """``curve(run, tag)`` gives a run's (epochs, values). The common metric in the first
    panel, then the validation loss of each loss in its own; mean over seeds per group."""
    losses = sorted({_loss_of(g) for g in groups})
    panels = [(f"epoch/val_{primary}", None)] if primary != "loss" else []
    panels += [("epoch/val_loss", loss) for loss in losses]
    plt = _pyplot()
    columns = 2 if len(panels) == 4 else min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, grid = plt.subplots(
        rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False, layout="constrained"
    )
    axes = [axis for row in grid for axis in row]
    drew = False
    for axis, (tag, loss) in zip(axes, panels, strict=False):
        for index, group in enumerate(groups):
            if loss is not None and _loss_of(group) != loss:
                continue
            epochs, mean = _mean_curve([curve(run, tag) for run in group.runs])
            if epochs:
                axis.plot(epochs, mean, label=_label(group, keys), linewidth=1.4, **style(index))
                drew = True
        _curve_axes(axis, tag, loss, len(losses))
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    if not drew:
        plt.close(figure)
        return False
    _legend_outside(figure, axes, ", ".join(keys) + " (mean over seeds)")
    _save(figure, path)
    return True


def _curve_axes(axis: Axes, tag: str, loss: str | None, losses: int) -> None:
    from matplotlib.ticker import MaxNLocator

    name = tag.split("/", 1)[1]
    title = f"{name} ({loss} loss)" if loss is not None and losses > 1 else name
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
    axis.grid(alpha=0.3)


def _loss_of(group: Group) -> str:
    return str((group.runs[0].metrics.get("hparams") or {}).get("loss", "loss"))


def _label(group: Group, keys: list[str]) -> str:
    return ",".join(group.params) if keys else "runs"


def _mean_curve(curves: list[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    """Per epoch, the mean over the seeds that reached it (a finite value)."""
    by_epoch: dict[int, list[float]] = {}
    for epochs, values in curves:
        for epoch, value in zip(epochs, values, strict=False):
            if math.isfinite(value):
                by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    return epochs, [statistics.fmean(by_epoch[e]) for e in epochs]


# ---- heatmap -------------------------------------------------------------------------------


def plot_heatmap(
    path: Path, keys: list[str], groups: Sequence[Group], metric: str, lower_is_better: bool
) -> list[list[float | None]]:
    """The metric's mean over the grid of the two swept keys; returns the grid it drew."""
    from trainlab.report import natural_key

    plt = _pyplot()
    rows = sorted({g.params[0] for g in groups}, key=natural_key)
    columns = sorted({g.params[1] for g in groups}, key=natural_key)
    by_params = {g.params: g.mean_std(metric)[0] for g in groups}
    grid = [[by_params.get((r, c)) for c in columns] for r in rows]
    figure, axis = plt.subplots(
        figsize=(1.5 * len(columns) + 3, 0.6 * len(rows) + 2.4), layout="constrained"
    )
    cmap = "viridis_r" if lower_is_better else "viridis"  # the better, the brighter
    cells = [[math.nan if v is None else v for v in row] for row in grid]
    image = axis.imshow(cells, cmap=cmap, aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    axis.set_yticks(range(len(rows)), rows)
    axis.set_xlabel(keys[1])
    axis.set_ylabel(keys[0])
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            colour = "black" if value is None else _text_colour(image.cmap(image.norm(value)))
            text = "-" if value is None else f"{value:.4g}"
            axis.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
    better = "lower" if lower_is_better else "higher"
    figure.colorbar(image, ax=axis, label=f"{metric} ({better} is better)")
    axis.set_title(f"{metric}: mean over {_seed_counts(groups, metric)}")
    _save(figure, path)
    return grid


def _text_colour(rgba: tuple[float, ...]) -> str:
    """Black on light cells, white on dark ones (relative luminance, ITU-R BT.709)."""
    red, green, blue = rgba[:3]
    return "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.45 else "white"


def write_plots(
    root: Path, groups: Sequence[Group], keys: list[str], metric: str, primary: str,
    lower_is_better: bool, curve: Any,
) -> list[str]:  # fmt: skip
    """Draw every picture that fits the sweep into ``root``; the names of the files written."""
    names = plot_files(metric, primary)
    written = []
    if plot_sensitivity(root / names[0], keys, groups, metric):
        written.append(names[0])
    if plot_curves(root / names[1], groups, keys, primary, curve):
        written.append(names[1])
    if len(keys) == 2:
        plot_heatmap(root / names[2], keys, groups, metric, lower_is_better)
        written.append(names[2])
    return written
