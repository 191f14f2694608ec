"""``trainlab-report PATH``: compare the runs of a sweep (or any folder of runs).

Reads every run's metrics.json and Hydra overrides, groups repeated seeds into mean ± std,
ranks the configurations by a metric, prints a table, and writes summary.csv, summary.md,
val_curves.png and (for two swept axes) heatmap.png into PATH. Running it again rewrites the
same files; runs still training or failed are listed with their status.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from trainlab.config_keys import flatten, runtime_only
from trainlab.console import make_console
from trainlab.errors import UserError, path_error
from trainlab.hparams_view import write_view
from trainlab.metric_names import larger_is_better
from trainlab.report_plots import plot_files, write_plots
from trainlab.stats import Summary, compare, summarize

REPORT_FILES = ("summary.csv", "summary.md")  # and the pictures of trainlab.report_plots


@dataclass
class Run:
    name: str  # folder below the report root
    path: Path
    metrics: dict[str, Any]
    overrides: dict[str, str]
    judged_by: tuple[str | None, str | None] = (None, None)  # config report.metric and .why
    identity: str = ""  # the experiment: its config without seed and runtime-only keys
    seed: Any = None

    @property
    def status(self) -> str:
        return self.metrics.get("status", "unknown")

    def value(self, metric: str) -> float | None:
        """``val_accuracy``, ``test_loss``, ...: a number of the weights the run ended with."""
        split, _, name = metric.partition("_")
        value = (self.metrics.get(split) or {}).get(name)
        return value if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class Group:
    """Runs that differ only in their seed."""

    params: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [v for v in (run.value(metric) for run in self.runs) if v is not None]

    def mean_std(self, metric: str) -> tuple[float | None, float | None]:
        return mean_and_std(self.values(metric))

    def summary(self, metric: str) -> Summary | None:
        return summarize(self.values(metric))

    def label(self, keys: list[str]) -> str:
        given = [f"{k}={v}" for k, v in zip(keys, self.params, strict=True) if v != "-"]
        return ",".join(given) or "the defaults"

    @property
    def status(self) -> str:
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        return ", ".join(f"{s} x{n}" if n > 1 else s for s, n in counts.items())


def mean_and_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); a single value has no std (None)."""
    summary = summarize(values)
    return (None, None) if summary is None else (summary.mean, summary.std)


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    entries = yaml.safe_load(path.read_text()) or []
    pairs = (str(entry).split("=", 1) for entry in entries if "=" in str(entry))
    return {key.lstrip("+~"): value for key, value in pairs if not key.startswith("hydra.")}


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _judged_by(config: dict[str, Any]) -> tuple[str | None, str | None]:
    """The config's ``report.metric`` and ``report.why`` (a preset's question's yardstick)."""
    judged = config.get("report")
    if not isinstance(judged, dict):
        return None, None
    return judged.get("metric"), judged.get("why")


def _identity(config: dict[str, Any]) -> str:
    """Runs of one experiment but for their seed have the same identity ("" without a config)."""
    if not config:
        return ""
    flat = {key: value for key, value in flatten(config).items() if not _ignored(key)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def _ignored(key: str) -> bool:
    """seed (aggregated over) and the keys that make no other experiment."""
    return key == "seed" or runtime_only(key)


def natural_key(text: str) -> list[tuple[int, float, str]]:
    """Sort ``batch_size=8`` before ``batch_size=32``: numbers compare as numbers."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", text)
    return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)]


def find_runs(root: Path, member_dirs: list[Path] | None = None) -> list[Run]:
    """The runs in ``member_dirs`` (default: every folder below ``root`` holding a
    metrics.json), in natural name order; a missing or unreadable metrics.json counts as failed."""
    root = root.resolve()
    if member_dirs is None:
        member_dirs = [path.parent for path in root.rglob("metrics.json")]
    runs = []
    for run_dir in sorted(
        {path.resolve() for path in member_dirs}, key=lambda p: natural_key(str(p))
    ):
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError) as error:
            metrics = {"status": "failed", "error": f"no readable metrics.json ({error})"}
        if run_dir == root:
            name = run_dir.name
        elif run_dir.is_relative_to(root):
            name = str(run_dir.relative_to(root))
        else:
            name = str(run_dir)
        config = _config(run_dir)
        runs.append(
            Run(
                name, run_dir, metrics, _overrides(run_dir), _judged_by(config),
                _identity(config), config.get("seed"),
            )
        )  # fmt: skip
    return runs


def swept_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value differs between runs (seed excluded: it is aggregated; so are
    keys that do not change the experiment, such as cpu_threads)."""
    keys: list[str] = []
    for run in runs:
        keys += [key for key in run.overrides if key not in keys]
    return [
        key
        for key in keys
        if not _ignored(key) and len({run.overrides.get(key) for run in runs}) > 1
    ]


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    """Runs of the same experiment (same swept values and config) but for their seed; of
    several attempts at one seed (a failed run and its rerun in another folder), the one that
    got furthest, then the latest."""
    groups: dict[tuple[Any, ...], Group] = {}
    for run in runs:
        params = tuple(run.overrides.get(key, "-") for key in keys)
        groups.setdefault((params, run.identity), Group(params)).runs.append(run)
    for group in groups.values():
        group.runs = _one_attempt_per_seed(group.runs)
    return list(groups.values())


def _one_attempt_per_seed(runs: list[Run]) -> list[Run]:
    if any(run.seed is None for run in runs):
        return runs  # runs without a config: nothing to tell attempts apart by
    progress = {"completed": 0, "early_stopped": 0, "diverged": 0, "interrupted": 1, "running": 1}
    ordered = sorted(runs, key=lambda run: str(run.metrics.get("started_at", "")), reverse=True)
    ordered.sort(key=lambda run: progress.get(run.status, 2))  # furthest first, then latest
    kept: dict[str, Run] = {}
    for run in ordered:
        kept.setdefault(json.dumps(run.seed, default=str), run)
    chosen = {id(run) for run in kept.values()}
    return [run for run in runs if id(run) in chosen]


def default_metric(runs: list[Run]) -> str:
    """The validation value of the task's primary metric (selection is done on validation)."""
    for run in runs:
        if run.metrics.get("primary_metric"):
            return f"val_{run.metrics['primary_metric']}"
    return "val_loss"


def chosen_metric(runs: list[Run]) -> tuple[str, str]:
    """What to rank by, and why: the metric the runs' preset judges its question by (when
    they agree on one), else the validation value of the primary metric."""
    chosen = {run.judged_by for run in runs if run.judged_by[0]}
    if len(chosen) == 1:
        [(metric, why)] = chosen
        return str(metric), f"the preset's choice: {why}" if why else "the preset's choice"
    return default_metric(runs), "the validation value of the task's primary metric"


def rank(groups: list[Group], metric: str) -> list[Group]:
    """Best first; groups without the metric (failed, still running) last."""
    larger_better = larger_is_better(metric)

    def key(group: Group) -> tuple[int, float]:
        mean, _ = group.mean_std(metric)
        if mean is None:
            return (2, 0.0)
        # A configuration that diverged, failed or is unfinished in any seed ranks after the
        # ones that trained cleanly, whatever its best weights scored.
        troubled = any(run.status not in ("completed", "early_stopped") for run in group.runs)
        return (int(troubled), -mean if larger_better else mean)

    return sorted(groups, key=key)


def verdicts(groups: list[Group], metric: str) -> list[str]:
    """For ranked groups: ``best``, ``≈ best`` (not significantly worse, Welch's t-test at
    5 %), ``worse``, with the p-value; empty where one seed leaves nothing to test."""
    best = groups[0].summary(metric) if groups else None
    found = ["best" if best is not None else ""]
    for group in groups[1:]:
        other = group.summary(metric)
        comparison = None if best is None or other is None else compare(
            best, other, larger_is_better(metric)
        )  # fmt: skip
        if comparison is None:
            found.append("")
        else:
            verdict = "worse" if comparison.significant else "≈ best"
            found.append(f"{verdict} ({p_value(comparison.p)})")
    return found


def answer(groups: list[Group], metric: str, keys: list[str]) -> str | None:
    """The sweep's answer in one line: the best configuration against the next one."""
    summaries = [(group, group.summary(metric)) for group in groups]
    ranked = [(group, summary) for group, summary in summaries if summary is not None]
    if len(ranked) < 2:
        return None
    (first, best), (second, other) = ranked[0], ranked[1]
    comparison = compare(best, other, larger_is_better(metric))
    names = first.label(keys), second.label(keys)
    if comparison is None:
        return (
            f"{names[0]} ranks first on {metric} ({best.mean:.4g} against {other.mean:.4g} for "
            f"{names[1]}); with one seed there is no confidence to give: sweep seed=0,1,2"
        )
    seeds = f"{best.n} seeds" if best.n == other.n else f"{best.n} and {other.n} seeds"
    gap = f"{comparison.difference:.3g} ± {comparison.ci:.2g}, 95 % CI, {seeds}"
    # A claim of a difference is two-sided, like its interval: "beats" when the interval
    # excludes zero (the one-sided ≈ best marks ask only whether a run is worse than the best).
    two_sided = p_value(min(1.0, 2 * comparison.p))
    if comparison.difference - comparison.ci > 0:
        return f"{names[0]} beats {names[1]} on {metric} by {gap} (Welch's t-test {two_sided})"
    return (
        f"{names[0]} ranks first on {metric}, but not significantly ahead of {names[1]} "
        f"(by {gap}; {two_sided}): more seeds may tell them apart"
    )


def answers(groups: list[Group], metric: str, keys: list[str]) -> list[str]:
    """The sweep's answer: with two or more swept keys and at most four settings of the
    others, one line per setting comparing the first key's values (a preset's question, such
    as which loss at each share of outliers); else the best configuration against the next."""
    settings = dict.fromkeys(group.params[1:] for group in groups)
    if len(keys) < 2 or len(settings) > MOST_SETTINGS_ANSWERED:
        said = answer(groups, metric, keys)
        return [said] if said else []
    lines = []
    for setting in sorted(settings, key=lambda values: [natural_key(v) for v in values]):
        alike = [Group(g.params[:1], g.runs) for g in groups if g.params[1:] == setting]
        said = answer(alike, metric, keys[:1])
        if said:
            where = ", ".join(f"{k}={v}" for k, v in zip(keys[1:], setting, strict=True))
            lines.append(f"at {where}: {said}")
    return lines


MOST_SETTINGS_ANSWERED = 4


def p_value(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3g}"


def _format(mean: float | None, std: float | None, runs: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if runs > 1 and std is not None else f"{mean:.4f}"


def _columns(runs: list[Run], metric: str) -> list[str]:
    names: list[str] = []
    for run in runs:
        for name in run.metrics.get("metric_names", []):
            if name not in names:
                names.append(name)
    columns = [f"val_{name}" for name in names] + [f"test_{name}" for name in names]
    if metric not in columns:
        columns.insert(0, metric)
    return columns


def write_csv(
    path: Path, keys: list[str], groups: list[Group], columns: list[str], metric: str
) -> None:
    """Per group: mean and sample std of every column (empty for one seed), then the ranked
    metric's 95 % confidence interval and its verdict against the best."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        header = [*keys, "runs", "status"]
        for column in columns:
            header += [f"{column}_mean", f"{column}_std"]
        writer.writerow([*header, f"{metric}_ci95", "vs_best"])
        for group, verdict in zip(groups, verdicts(groups, metric), strict=True):
            row: list[Any] = [*group.params, len(group.runs), group.status]
            for column in columns:
                mean, std = group.mean_std(column)
                row += ["" if mean is None else mean, "" if std is None else std]
            summary = group.summary(metric)
            ci = "" if summary is None or summary.ci is None else summary.ci
            writer.writerow([*row, ci, verdict])


def write_markdown(
    path: Path, keys: list[str], groups: list[Group], columns: list[str], metric: str, why: str
) -> None:
    header = ["rank", *keys, "runs", "status", "vs best", *columns]
    said = answers(groups, metric, keys)
    lines = [f"# Sweep summary: ranked by {metric}", "", f"Ranked by {metric}: {why}.", ""]
    lines += [f"- {line}" for line in said] + [""] if said else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for position, (group, verdict) in enumerate(
        zip(groups, verdicts(groups, metric), strict=True), 1
    ):
        cells = [str(position), *group.params, str(len(group.runs)), group.status, verdict]
        cells += [_format(*group.mean_std(c), len(group.values(c))) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [run for group in groups for run in group.runs if run.metrics.get("error")]
    if failed:
        lines += ["", "## Errors", ""]
        lines += [f"- `{run.name}`: {run.metrics['error']}" for run in failed]
    path.write_text("\n".join(lines) + "\n")


def curve(run: Run, tag: str) -> tuple[list[int], list[float]]:
    """An ``epoch/*`` series: from metrics.json's history (a finished run holds every epoch
    there), else from the TensorBoard events of a run still training."""
    history = run.metrics.get("history") or {}
    name = tag.split("/", 1)[1]
    if name in history:
        pairs = [
            (e, v)
            for e, v in zip(history.get("epoch", []), history[name], strict=False)
            if v is not None
        ]
        return [e for e, _ in pairs], [v for _, v in pairs]
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run.path), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            points = events.Scalars(tag)
            return [p.step for p in points], [p.value for p in points]
    except Exception:  # no or unreadable event files
        pass
    return [], []


def report(root: Path, metric: str | None = None, plots: bool = True) -> list[Group]:
    """Write the report files for the runs below ``root``; return the ranked groups. Learning-
    rate probes (mode=lr_find) are listed apart, with their suggestions, and never ranked."""
    from trainlab.report_probes import PROBE_CSV, is_probe, probe_table, write_probe_csv

    found = find_runs(root)
    if not found:
        raise ReportError(f"no runs (metrics.json files) below {root}")
    console = make_console()
    probes = [run for run in found if is_probe(run)]
    if probes:
        write_probe_csv(root / PROBE_CSV, probes)
        console.print(probe_table(probes, f"{len(probes)} probes in {root}"))
        console.print(f"wrote {PROBE_CSV} in {root}", soft_wrap=True)
    runs = [run for run in found if not is_probe(run)]
    return _report_runs(root, runs, metric, plots, console) if runs else []


def _report_runs(
    root: Path, runs: list[Run], metric: str | None, plots: bool, console: Console
) -> list[Group]:
    """Rank the runs, answer, write the summaries and the pictures."""
    tasks = {run.metrics.get("task") for run in runs} - {None}
    if len(tasks) > 1:
        console.print(
            f"note: the runs mix tasks ({', '.join(sorted(tasks))}); pass --metric to choose"
        )
    metric, why = (metric, "as asked") if metric else chosen_metric(runs)
    columns = _columns(runs, metric)
    if not any(run.value(metric) is not None for run in runs) and any(
        r.metrics.get("val") for r in runs
    ):
        known = ", ".join(c for c in columns if c != metric)
        raise ReportError(f"no run has a value for --metric {metric}; choose one of: {known}")
    keys = swept_keys(runs)
    groups = rank(group_runs(runs, keys), metric)
    write_csv(root / "summary.csv", keys, groups, columns, metric)
    write_markdown(root / "summary.md", keys, groups, columns, metric, why)
    primary = next(
        (r.metrics["primary_metric"] for r in runs if r.metrics.get("primary_metric")), "loss"
    )
    for stale in plot_files(metric, primary):  # never a picture of an earlier state
        (root / stale).unlink(missing_ok=True)
    pictures = (
        write_plots(root, groups, keys, metric, primary, not larger_is_better(metric), curve)
        if plots
        else []
    )
    write_view(root, [run.metrics for run in runs])  # TensorBoard's HParams columns
    title = f"{len(runs)} runs in {root}"
    console.print(ranked_table(title, groups, keys, columns, metric, console.width))
    console.print(f"ranked by {metric}: {why}", soft_wrap=True)
    for line in answers(groups, metric, keys):
        console.print(line, soft_wrap=True)
    written = [*REPORT_FILES, *pictures]
    console.print(
        f"wrote {', '.join(written)} in {root} (with every metric), and the HParams dashboard's "
        "columns for TensorBoard",
        soft_wrap=True,
    )
    return groups


def ranked_table(
    title: str, groups: list[Group], keys: list[str], columns: list[str], metric: str,
    width: int = 120,
) -> Table:  # fmt: skip
    """The console's table: the ranked metric on validation and test (the files hold every
    metric), so that it fits a terminal ``width`` wide. A column per swept key when they fit,
    else one configuration column of ``key=value`` words wrapped between words (narrow
    columns would break them letter by letter)."""
    name = metric.partition("_")[2]
    shown = [c for c in dict.fromkeys([metric, f"val_{name}", f"test_{name}"]) if c in columns]
    if width < 100:
        shown = shown[:1]  # a narrow terminal: the ranked metric only
    ranked = list(zip(groups, verdicts(groups, metric), strict=True))
    rows = [
        [str(position), str(len(group.runs)), group.status, verdict]
        + [_format(*group.mean_std(c), len(group.values(c))) for c in shown]
        for position, (group, verdict) in enumerate(ranked, 1)
    ]
    headers = ["#", "runs", "status", "vs best", *shown]
    with_params = [[*row, *group.params] for row, (group, _) in zip(rows, ranked, strict=True)]
    separate = not keys or _width(with_params, [*headers, *keys]) <= width
    params = (
        [list(g.params) for g, _ in ranked]
        if separate
        else [[g.label(keys).replace(",", " ")] for g, _ in ranked]
    )
    table = Table(title=f"{title}, ranked by {metric}")
    table.add_column("#", justify="right", no_wrap=True)
    for header in keys if separate else ["configuration"]:
        table.add_column(header, overflow="fold")
    table.add_column("runs", justify="right", no_wrap=True)
    # Otherwise rich narrows every wrapping column alike: these give the configuration room.
    narrow = {} if separate else {"status": 14, "vs best": 11, "metric": 9}
    table.add_column("status", overflow="fold", max_width=narrow.get("status"))
    table.add_column("vs best", overflow="fold", max_width=narrow.get("vs best"))
    for header in shown:  # "0.0530 ± 0.0027" may wrap before the ± in a narrow terminal
        table.add_column(header, justify="right", no_wrap=separate, max_width=narrow.get("metric"))
    for row, param in zip(rows, params, strict=True):
        table.add_row(row[0], *param, *row[1:])
    return table


def _width(rows: list[list[str]], headers: list[str]) -> int:
    """The width a table needs to show every cell on one line."""
    widest = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    return sum(widest) + 3 * len(headers) + 1


def provenance_table(root: Path) -> Table:
    """Per run: config hash, code commit, versions, host and start time (from provenance.json)."""
    table = Table(title=f"provenance of the runs in {root}")
    for header in (
        "run",
        "status",
        "config hash",
        "commit",
        "trainlab",
        "torch",
        "host",
        "started",
    ):
        table.add_column(header, overflow="fold")
    for run in find_runs(root):
        try:
            provenance = json.loads((run.path / "provenance.json").read_text())
        except (OSError, json.JSONDecodeError):
            table.add_row(run.name, run.status, *["-"] * 6)
            continue
        code, versions = provenance.get("code", {}), provenance.get("versions", {})
        commit = (code.get("commit") or "-")[:10] + (" +dirty" if code.get("dirty") else "")
        table.add_row(
            run.name, run.status, provenance.get("config_hash", "-"), commit,
            str(versions.get("trainlab")), str(versions.get("torch")),
            str(provenance.get("host")), str(provenance.get("started_at")),
        )  # fmt: skip
    return table


def parser() -> argparse.ArgumentParser:
    """trainlab-report's command line."""
    parser = argparse.ArgumentParser(
        prog="trainlab-report", description="Compare the runs of a sweep or a folder of runs."
    )
    parser.add_argument("path", type=Path, help="a multirun folder or any folder of runs")
    parser.add_argument(
        "--metric",
        help="rank by this, e.g. val_loss, val_accuracy, test_mse (default: validation value of the task's main metric)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--provenance",
        action="store_true",
        help="only list what produced each run (provenance.json)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: ``trainlab-report PATH [--metric NAME] [--no-plots]``."""
    args = parser().parse_args(argv)
    if not args.path.is_dir():
        print(f"trainlab-report: error: {args.path} is not a folder", file=sys.stderr)
        raise SystemExit(2)
    if args.provenance:
        make_console().print(provenance_table(args.path))
        return
    try:
        report(args.path, args.metric, plots=not args.no_plots)
    except (ReportError, UserError) as error:  # UserError: a view file that cannot be written
        print(f"trainlab-report: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:  # the report's own files: a read-only folder, a full disk...
        mistake = path_error(error)
        if mistake is None:
            raise
        print(
            f"trainlab-report: error: {mistake} (the report writes its files into {args.path})",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


class ReportError(ValueError):
    """Nothing to report, or a --metric no run has: the user's to fix."""


if __name__ == "__main__":
    main()
