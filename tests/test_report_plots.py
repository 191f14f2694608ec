"""trainlab-report's pictures: which ones a sweep gets, their names, scales and colours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trainlab.report import Group, Run, find_runs, report
from trainlab.report_plots import (
    COLOURS,
    _text_colour,
    log_spaced,
    numeric_keys,
    plot_heatmap,
    plot_sensitivity,
    style,
)

PNG = b"\x89PNG\r\n\x1a\n"
# Clean test MSE of a loss as the outliers grow (mse suffers, huber and mae much less).
TEST_MSE = {"mse": (0.06, 0.16, 0.25), "huber": (0.05, 0.08, 0.10), "mae": (0.07, 0.07, 0.08)}


def _preset_run(root: Path, loss: str, level: int, seed: int) -> None:
    """A member of ``+experiment=regression_losses seed=0,1,2`` as it leaves its folder."""
    outliers = (0.0, 0.1, 0.3)[level]
    run_dir = root / f"dataset.outliers={outliers},loss={loss},seed={seed}"
    (run_dir / ".hydra").mkdir(parents=True)
    config = {
        "seed": seed, "epochs": 3, "loss": {"name": loss},
        "dataset": {"name": "synthetic", "task": "regression", "outliers": outliers},
        "report": {"metric": "test_mse", "why": "the test set is clean"},
    }  # fmt: skip
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = [f"loss={loss}", f"dataset.outliers={outliers}", f"seed={seed}"]
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    test = TEST_MSE[loss][level] + 0.002 * seed
    metrics = {
        "status": "completed", "task": "regression", "primary_metric": "mse",
        "metric_names": ["loss", "mse", "mae"],
        "val": {"loss": 1.0 + outliers, "mse": 1.0 + 5 * outliers, "mae": 0.5},
        "test": {"loss": test, "mse": test, "mae": 0.2},
        "best_val_loss": 1.0, "epochs_run": 3,
        "history": {"epoch": [1, 2, 3], "val_loss": [3.0, 2.0, 1.0], "val_mse": [4.0, 2.0, 1.0]},
        "hparams": {"loss": loss, "dataset.outliers": outliers, "seed": seed, "model": "mlp"},
    }  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_the_regression_losses_preset_gets_its_answer_its_plots_and_names(tmp_path, capsys):
    for loss in TEST_MSE:
        for level in range(3):
            for seed in range(3):
                _preset_run(tmp_path, loss, level, seed)
    groups = report(tmp_path)
    out = capsys.readouterr().out
    assert "ranked by test_mse: the preset's choice: the test set is clean" in out
    # The preset's question, answered at each share of outliers (seeds add 0, 0.002, 0.004).
    assert "at dataset.outliers=0.3: loss=mae beats loss=huber on test_mse by 0.02 ± 0.0045" in out
    assert "at dataset.outliers=0.1: loss=mae beats loss=huber on test_mse by 0.01 ± " in out
    assert "at dataset.outliers=0.0: loss=huber beats loss=mse on test_mse by 0.01 ± " in out
    assert groups[0].params == ("huber", "0.0") or groups[0].params == ("0.0", "huber")
    pictures = ("sensitivity_test_mse.png", "curves_val_mse.png", "heatmap_test_mse.png")
    for name in pictures:
        assert (tmp_path / name).read_bytes()[:8] == PNG, name
    heatmap = (tmp_path / "heatmap_test_mse.png").read_bytes()
    report(tmp_path, "val_mse")  # another metric adds its pictures, replaces none
    assert (tmp_path / "heatmap_test_mse.png").read_bytes() == heatmap
    assert (tmp_path / "heatmap_val_mse.png").read_bytes()[:8] == PNG
    assert (tmp_path / "sensitivity_val_mse.png").exists()


def test_log_axis_only_for_log_spaced_values():
    assert log_spaced([1e-4, 1e-3, 1e-2, 1e-1])
    assert log_spaced([0.001, 0.003, 0.01, 0.03])
    assert log_spaced([0.001, 0.01])
    assert not log_spaced([0.0, 0.1, 0.3])  # zero has no logarithm
    assert not log_spaced([16, 32, 48, 64])  # evenly spaced, a factor 4
    assert not log_spaced([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])  # linear, a factor 10


def _group(params: tuple[str, ...], values: list[float]) -> Group:
    runs = [
        Run(f"{params}{i}", Path("."), {"status": "completed", "val": {"mse": v}}, {})
        for i, v in enumerate(values)
    ]
    return Group(params, runs)


def test_sensitivity_needs_a_numeric_swept_key(tmp_path):
    groups = [_group(("mse", "0.1"), [0.3]), _group(("huber", "0.1"), [0.2])]
    assert numeric_keys(["loss", "optimizer.lr"], groups) == []  # one lr: nothing to plot along
    assert not plot_sensitivity(tmp_path / "s.png", ["loss", "optimizer.lr"], groups, "val_mse")
    groups += [_group(("mse", "1"), [0.5, 0.6]), _group(("huber", "1"), [0.4])]
    assert numeric_keys(["loss", "optimizer.lr"], groups) == ["optimizer.lr"]
    assert plot_sensitivity(tmp_path / "s.png", ["loss", "optimizer.lr"], groups, "val_mse")
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG


def test_heatmap_cells_hold_the_seed_means_in_a_readable_colour(tmp_path):
    groups = [_group((a, b), [0.1 * i, 0.1 * i + 0.02]) for i, (a, b) in enumerate(
        [("x", "1"), ("x", "2"), ("y", "1"), ("y", "2")])]  # fmt: skip
    grid = plot_heatmap(tmp_path / "h.png", ["a", "b"], groups, "val_mse", lower_is_better=True)
    assert grid == [
        [pytest.approx(0.01), pytest.approx(0.11)],
        [pytest.approx(0.21), pytest.approx(0.31)],
    ]
    assert _text_colour((0.993, 0.906, 0.144, 1.0)) == "black"  # viridis' yellow end
    assert _text_colour((0.267, 0.005, 0.329, 1.0)) == "white"  # viridis' purple end


def test_eleven_lines_look_different_and_no_yellow_on_white():
    looks = {(style(i)["color"], style(i)["linestyle"]) for i in range(28)}
    assert len(looks) == 28
    assert "#F0E442" not in COLOURS


def test_a_folder_of_mixed_single_runs_prints_a_readable_table(tmp_path, capsys):
    """Single runs differing in many keys: one configuration column, no word broken."""
    settings = [
        {"loss": "huber", "optimizer": "sgd", "epochs": 5},
        {"loss": "mse", "model": "linear", "batch_size": 256},
        {"optimizer.lr": 0.003, "schedule": "cosine", "regularizer": "l2"},
        {"dataset.outliers": 0.3, "seed": 4},
    ]
    for index, overrides in enumerate(settings):
        run_dir = tmp_path / f"10-0{index}"
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 0, **overrides}))
        lines = [f"{key}={value}" for key, value in overrides.items()]
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(lines))
        metrics = {"status": "completed", "primary_metric": "mse", "val": {"mse": 0.1 + index}}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    report(tmp_path, plots=False)
    table = capsys.readouterr().out
    words = [f"{k}={v}" for o in settings for k, v in o.items() if k != "seed"]
    assert all(word in table for word in words), table  # each key=value whole, on one line


def test_the_table_fits_an_80_column_terminal_without_breaking_words(tmp_path):
    from rich.console import Console

    from trainlab.report import _columns, group_runs, rank, ranked_table, swept_keys

    for loss in TEST_MSE:
        for level in range(3):
            for seed in range(3):  # "0.0530 ± 0.0027" cells: too wide for a column per key
                _preset_run(tmp_path, loss, level, seed)
    runs = find_runs(tmp_path)
    keys = swept_keys(runs)
    groups = rank(group_runs(runs, keys), "test_mse")
    console = Console(width=80, record=True)
    console.print(ranked_table("t", groups, keys, _columns(runs, "test_mse"), "test_mse", 80))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "dataset.outliers=0.3" in text and "loss=huber" in text
