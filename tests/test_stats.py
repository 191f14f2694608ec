"""Statistics over seeds (trainlab/stats.py) against reference values, and the report's verdicts
and one-line answer built on them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from trainlab.report import Group, Run, answer, verdicts
from trainlab.stats import compare, summarize, t_cdf, t_quantile


def test_students_t_matches_reference_values():
    # scipy.stats.t.ppf(0.975, df) and scipy.stats.t.cdf(2.0, 5)
    for df, quantile in ((1, 12.706204736174698), (2, 4.302652729749464), (10, 2.2281388519649385)):
        assert t_quantile(0.975, df) == pytest.approx(quantile, rel=1e-9)
    assert t_cdf(2.0, 5) == pytest.approx(0.9490302605850709, rel=1e-12)
    assert t_cdf(-2.0, 5) == pytest.approx(1 - 0.9490302605850709, rel=1e-12)
    assert t_cdf(0.0, 3.7) == pytest.approx(0.5)


def _t_tail(t: float, df: float, steps: int = 20000) -> float:
    """P(T > t) by Simpson's rule on the density, to check the continued fraction."""
    norm = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))

    def density(x: float) -> float:
        return norm * (1 + x * x / df) ** (-(df + 1) / 2)

    upper, h = t + 200.0, 200.0 / steps
    total = density(t) + density(upper)
    total += sum((4 if i % 2 else 2) * density(t + i * h) for i in range(1, steps))
    return total * h / 3


def test_welchs_test_and_the_confidence_intervals():
    low, high = summarize([1, 2, 3, 4, 5]), summarize([2, 4, 6, 8, 10])
    assert low.std == pytest.approx(math.sqrt(2.5)) and high.std == pytest.approx(math.sqrt(10))
    assert low.ci == pytest.approx(2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5))
    # high is better when larger is: is low worse? t = 3 / sqrt(2.5), Welch df = 6.25 / 1.0625
    worse = compare(high, low, larger_better=True)
    assert worse.difference == 3.0
    assert worse.p == pytest.approx(_t_tail(3 / math.sqrt(2.5), 6.25 / 1.0625), rel=1e-6)
    assert worse.p == pytest.approx(0.1075 / 2, abs=5e-4)  # scipy's two-sided p is 0.1075
    assert not worse.significant
    assert summarize([0.5]) == (1, 0.5, None, None)  # one seed: no spread, no interval
    assert compare(summarize([0.5]), low, larger_better=True) is None
    assert summarize([]) is None


def _group(name: str, values: list[float]) -> Group:
    runs = [
        Run(f"{name}{i}", Path(name), {"status": "completed", "test": {"mse": v}}, {})
        for i, v in enumerate(values)
    ]
    return Group((name,), runs)


def test_the_report_marks_what_is_not_significantly_worse_and_answers_in_one_line():
    huber = _group("huber", [0.200, 0.210, 0.205])
    mae = _group("mae", [0.206, 0.214, 0.209])
    mse = _group("mse", [0.310, 0.330, 0.320])
    groups, keys = [huber, mae, mse], ["loss"]
    said = verdicts(groups, "test_mse")
    assert said[0] == "best" and said[1].startswith("≈ best (p=") and said[2].startswith("worse")
    line = answer(groups, "test_mse", keys)
    assert line.startswith("loss=huber ranks first on test_mse, but not significantly ahead of")
    clear = answer([huber, mse], "test_mse", keys)
    assert clear.startswith("loss=huber beats loss=mse on test_mse by 0.115 ± ")
    assert clear.endswith(", 95 % CI, 3 seeds (Welch's t-test p<0.001)")
    # One-sided p=0.034 (so mse is marked worse than the best), two-sided 0.067: the 95 %
    # interval of the difference holds zero, so the line claims no win.
    close = [_group("huber", [1.78, 1.82]), _group("mse", [1.95, 1.96])]
    assert verdicts(close, "test_mse")[1] == "worse (p=0.0336)"
    assert "not significantly ahead" in answer(close, "test_mse", keys)
    assert "(by 0.155 ± 0.2, 95 % CI, 2 seeds; p=0.0673)" in answer(close, "test_mse", keys)
    alone = answer([_group("huber", [0.2]), _group("mse", [0.3])], "test_mse", keys)
    assert "with one seed there is no confidence to give" in alone


def test_the_report_ranks_by_the_metric_a_preset_judges_its_question_by(tmp_path):
    from trainlab.report import chosen_metric, find_runs

    for name, judged in (("a", "metric: test_mse\n  why: clean test set"), ("b", None)):
        run_dir = tmp_path / name
        (run_dir / ".hydra").mkdir(parents=True)
        report = f"report:\n  {judged}\n" if judged else "report:\n  metric: null\n"
        (run_dir / ".hydra" / "config.yaml").write_text(f"epochs: 3\n{report}")
        (run_dir / "metrics.json").write_text('{"status": "completed", "primary_metric": "mse"}')
    runs = find_runs(tmp_path)
    assert chosen_metric(runs) == ("test_mse", "the preset's choice: clean test set")
    assert chosen_metric(runs[1:]) == (
        "val_mse",
        "the validation value of the task's primary metric",
    )


def _single_run(root: Path, name: str, status: str, mse: float | None, started: str, **config):
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    settings = {"seed": 0, "epochs": 3, "loss": {"name": "mse"}, "cpu_threads": None, **config}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(settings))
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"{k}={v}" for k, v in config.items() if not isinstance(v, dict)])
    )
    metrics = {"status": status, "started_at": started, "primary_metric": "mse"}
    if mse is not None:
        metrics["val"] = {"mse": mse}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_a_folder_of_single_runs_groups_by_experiment_and_counts_an_attempt_once(tmp_path):
    from trainlab.report import find_runs, group_runs, swept_keys

    _single_run(tmp_path, "10-00", "failed", None, "2026-11-30T10:00", epochs=5)
    _single_run(tmp_path, "10-05", "completed", 0.30, "2026-11-30T10:05", epochs=5)  # its rerun
    _single_run(tmp_path, "10-10", "completed", 0.32, "2026-11-30T10:10", epochs=5, seed=1)
    _single_run(
        tmp_path, "10-20", "completed", 0.50, "2026-11-30T10:20", epochs=5, cpu_threads=1, seed=2
    )
    _single_run(tmp_path, "11-00", "completed", 0.40, "2026-11-30T11:00", epochs=9)
    runs = find_runs(tmp_path)
    keys = swept_keys(runs)
    assert keys == ["epochs"]  # seed is aggregated; cpu_threads makes no other experiment
    groups = {(g.params, tuple(r.name for r in g.runs)) for g in group_runs(runs, keys)}
    # cpu_threads does not make another experiment; the failed attempt gave way to its rerun.
    assert groups == {(("5",), ("10-05", "10-10", "10-20")), (("9",), ("11-00",))}


def test_two_swept_keys_are_answered_per_setting_of_the_second_when_there_are_few():
    from trainlab.report import Group, answers

    def group(loss: str, level: str, values: list[float]) -> Group:
        return Group((loss, level), _group(loss, values).runs)

    groups = [
        group(loss, str(level), [base + level + 0.01 * i for i in range(3)])
        for level in range(5)
        for loss, base in (("huber", 0.1), ("mse", 0.2))
    ]
    keys = ["loss", "dataset.outliers"]
    assert len(answers(groups[:8], "test_mse", keys)) == 4  # four settings: a line each
    line = answers(groups[:8], "test_mse", keys)[3]
    assert line.startswith("at dataset.outliers=3: loss=huber beats loss=mse on test_mse by 0.1 ±")
    assert len(answers(groups, "test_mse", keys)) == 1  # five: the best against the next
