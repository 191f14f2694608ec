"""trainlab-report on a real sweep (with diverging members), its seed aggregation, and the
Hydra launcher and sweeper plugins: joblib and Optuna (submitit: tests/test_slurm.py)."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY, member_metrics, needs_plugin, run_cli, train_run
from trainlab.report import Group, Run, find_runs, mean_and_std, rank, report, swept_keys


def test_mean_and_sample_std():
    assert mean_and_std([]) == (None, None)
    assert mean_and_std([0.5]) == (0.5, None)  # one value has no spread to estimate
    mean, std = mean_and_std([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)  # sample std, n - 1


def _run(name: str, status: str, accuracy: float | None, **overrides) -> Run:
    metrics = {"status": status, "primary_metric": "accuracy", "metric_names": ["loss", "accuracy"]}
    if accuracy is not None:
        metrics["val"] = {"loss": 1 - accuracy, "accuracy": accuracy}
    return Run(name, Path(name), metrics, {k: str(v) for k, v in overrides.items()})


def test_seeds_are_aggregated_and_groups_ranked_with_failures_last():
    runs = [
        _run("a0", "completed", 0.70, lr=0.1, seed=0),
        _run("a1", "completed", 0.80, lr=0.1, seed=1),
        _run("b0", "completed", 0.90, lr=0.01, seed=0),
        _run("b1", "diverged", None, lr=0.01, seed=1),
        _run("c0", "failed", None, lr=1.0, seed=0),
        _run("d0", "running", None, lr=0.001, seed=0),
    ]
    assert swept_keys(runs) == ["lr"]
    groups = rank(
        [
            Group((lr,), [r for r in runs if r.overrides["lr"] == lr])
            for lr in ("0.1", "0.01", "1.0", "0.001")
        ],
        "val_accuracy",
    )
    # A configuration with a diverged seed ranks after the clean ones, whatever it scored.
    assert [g.params for g in groups][:2] == [("0.1",), ("0.01",)]
    assert groups[0].mean_std("val_accuracy") == (
        pytest.approx(0.75),
        pytest.approx(0.0707107, rel=1e-5),
    )
    assert groups[1].mean_std("val_accuracy") == (0.9, None)  # the diverged seed has no value
    assert groups[1].status == "completed, diverged"
    assert {g.params[0] for g in groups[2:]} == {"1.0", "0.001"}
    clean = [_run("x", "completed", 0.6, lr=1), _run("y", "completed", 0.9, lr=2)]
    by_loss = rank([Group((r.overrides["lr"],), [r]) for r in clean], "val_loss")
    assert [g.params for g in by_loss] == [("2",), ("1",)]  # losses: lower is better


def run_report(*args: str, capsys) -> subprocess.CompletedProcess:
    """``trainlab-report ARGS`` through its entry point, in this process (a fresh process
    proves nothing more: test_the_report_and_the_help_import_no_torch checks its imports)."""
    from trainlab.report import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["trainlab-report", *args], code, out, err)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_report_on_a_real_sweep_with_diverging_members(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "optimizer=sgd", "loss=mse", "optimizer.lr=0.05,1e6", "seed=0,1", *TINY,
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report_run = run_report(str(sweep), capsys=capsys)
    assert report_run.returncode == 0, report_run.stderr
    assert "ranked by val_accuracy" in report_run.stdout and "diverged x2" in report_run.stdout

    runs = find_runs(sweep)
    rows = _csv_rows(sweep / "summary.csv")
    assert len(runs) == 4 and len(rows) == 2
    assert list(rows[0])[:3] == ["optimizer.lr", "runs", "status"]
    # The working lr ranks first, its two seeds as mean and sample std; the diverged one last.
    good, diverged = rows
    assert float(good["optimizer.lr"]) == 0.05 and float(diverged["optimizer.lr"]) > 1
    assert diverged["status"] == "diverged x2" and diverged["val_accuracy_mean"] == ""
    assert good["status"] in (
        "completed x2", "early_stopped x2", "completed, early_stopped", "early_stopped, completed"
    )  # fmt: skip
    values = [r.metrics["val"]["accuracy"] for r in runs if r.overrides["optimizer.lr"] == "0.05"]
    assert float(good["val_accuracy_mean"]) == pytest.approx(statistics.fmean(values))
    assert float(good["val_accuracy_std"]) == pytest.approx(statistics.stdev(values))

    markdown = (sweep / "summary.md").read_text()
    assert "ranked by val_accuracy" in markdown and markdown.count("diverged x2") == 1
    assert f"| 1 | {good['optimizer.lr']} | 2 |" in markdown
    # One numeric swept key: its sensitivity plot and the curves (from the runs' histories); a
    # heatmap needs two keys (tests/test_report_plots.py draws one).
    pictures = ("sensitivity_val_accuracy.png", "curves_val_accuracy.png")
    for image in pictures:
        assert (sweep / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (sweep / "heatmap_val_accuracy.png").exists()

    before = {name: (sweep / name).read_bytes() for name in ("summary.csv", "summary.md")}
    report(sweep, plots=False)  # again: the same files, nothing picked up from the report itself
    assert {name: (sweep / name).read_bytes() for name in before} == before
    assert not any((sweep / image).exists() for image in pictures)


def test_report_includes_running_and_failed_members(tmp_path):
    for name, metrics in (
        ("lr=0.1", {"status": "running", "started_at": "now"}),
        ("lr=0.2", {"status": "failed", "error": "optimizer.lr must be > 0"}),
    ):
        run_dir = tmp_path / name
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([name]))
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    groups = report(tmp_path)
    assert sorted(g.status for g in groups) == ["failed", "running"]
    assert "optimizer.lr must be > 0" in (tmp_path / "summary.md").read_text()


def test_report_refuses_an_unknown_metric(tmp_path, capsys):
    run_dir = tmp_path / "lr=0.1"
    run_dir.mkdir()
    metrics = {
        "status": "completed",
        "metric_names": ["loss", "accuracy"],
        "val": {"loss": 1.0, "accuracy": 0.5},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    result = run_report(str(tmp_path), "--metric", "val_foo", capsys=capsys)
    assert result.returncode == 2
    assert (
        "no run has a value for --metric val_foo; choose one of: val_loss, val_accuracy"
        in result.stderr
    )


def test_report_shows_provenance(tmp_path, capsys):
    from tests.helpers import compose_config

    metrics = train_run(compose_config(*TINY), tmp_path / "lr=0.003", command=["trainlab"])
    result = run_report(str(tmp_path), "--provenance", capsys=capsys)
    assert result.returncode == 0, result.stderr
    assert metrics["config_hash"] in result.stdout and "lr=0.003" in result.stdout


def test_report_refuses_a_folder_without_runs(tmp_path, capsys):
    result = run_report(str(tmp_path), capsys=capsys)
    assert result.returncode == 2 and result.stderr.startswith("trainlab-report: error: no runs")


@needs_plugin["joblib"]
def test_joblib_launcher_runs_two_members_in_parallel(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "cpu_threads=1",
        "epochs=20", "early_stopping.enabled=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = list(member_metrics(sweep).values())
    assert [m["status"] for m in metrics] == ["completed", "completed"]
    assert len({m["pid"] for m in metrics}) == 2  # two worker processes
    starts = [datetime.fromisoformat(m["started_at"]) for m in metrics]
    ends = [datetime.fromisoformat(m["finished_at"]) for m in metrics]
    assert max(starts) < min(ends)  # their training (about 2 s each) overlapped in time
    assert len(list(sweep.glob("*/events.out.tfevents.*"))) == 2  # one per member


@needs_plugin["optuna"]
def test_optuna_search_preset_runs_trials_and_maximizes_validation_accuracy(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "+experiment=optuna_search", "hydra.sweeper.n_trials=3", *TINY,
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    accuracies = [m["val"]["accuracy"] for m in member_metrics(sweep).values()]
    assert len(accuracies) == 3
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(accuracies))
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "loss"}


@needs_plugin["optuna"]
def test_a_failing_optuna_trial_does_not_stop_the_search(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        "-m", "+experiment=optuna_search", "hydra.sweeper.n_trials=4", "hydra.sweeper.direction=minimize",
        "loss=choice(mse, hinge)", "dataset.task=regression", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    statuses = [m["status"] for m in member_metrics(sweep).values()]
    assert len(statuses) == 4 and set(statuses) <= {"completed", "early_stopped", "failed"}
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["loss"] == "mse"  # hinge cannot fit regression: those trials failed


def test_a_folder_the_report_cannot_write_to_is_one_line(tmp_path, capsys, monkeypatch):
    from trainlab import report as report_module

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "val": {"loss": 1}}))
    (tmp_path / "summary.csv").mkdir()  # a folder where the report writes a file
    with pytest.raises(SystemExit) as exit_info:
        report_module.main([str(tmp_path), "--no-plots"])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"trainlab-report: error: {tmp_path / 'summary.csv'}: Is a directory")

    (tmp_path / "summary.csv").rmdir()

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "summary.csv"))

    monkeypatch.setattr(report_module, "write_csv", read_only)
    with pytest.raises(SystemExit):
        report_module.main([str(tmp_path), "--no-plots"])
    line = capsys.readouterr().err.strip()
    assert "Permission denied; choose a path you may write to" in line and "Traceback" not in line


def test_the_report_and_the_help_import_no_torch():
    """Start-up is user time: printing a table or the help needs neither torch nor TensorBoard's
    writer (each costs seconds to import)."""
    script = (
        "import sys, trainlab.report, trainlab.cli, trainlab.sweep, trainlab.preflight; "
        "print(sorted(m for m in ('torch', 'tensorboard') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
