"""Top-level settings and device checks, and the end-of-sweep summary."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose_config
from trainlab.errors import ConfigError
from trainlab.experiment import read_run_settings, resolve_device
from trainlab.sweep import SweepSummary


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["seed=99999999999999999999"], "seed must be in [0, 2^63)"),
        (["seed=-1"], "seed must be in [0, 2^63)"),
        (["epochs=0"], "epochs must be >= 1"),
        (["early_stopping.min_delta=-0.1"], "early_stopping.min_delta must be >= 0"),
        (["restore_best=maybe"], "restore_best must be true or false"),
        (["+learning_rate=0.1"], "learning_rate is not a setting here"),
    ],
)
def test_bad_top_level_settings(overrides, fragment):
    with pytest.raises(ConfigError) as error:
        read_run_settings(compose_config(*overrides))
    assert fragment in str(error.value)


@pytest.mark.parametrize("name", ["cuda:abc", "cuda:-1", "gpu", "CPU"])
def test_malformed_devices_are_refused(name):
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda, cuda:N or mps"):
        resolve_device(name)


def test_sweep_summary_counts_only_this_sweeps_members(tmp_path, capsys):
    old, new = tmp_path / "loss=mse", tmp_path / "loss=mae"
    for run_dir, status in ((old, "failed"), (new, "completed")):
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps({"status": status}))
    summary = SweepSummary()
    summary.on_job_end(OmegaConf.create({"hydra": {"runtime": {"output_dir": str(new)}}}), None)
    summary.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    output = capsys.readouterr().out
    assert "loss=mae" in output and "loss=mse" not in output

    with pytest.raises(SystemExit) as exit_info:  # without member records: every run found
        SweepSummary().on_multirun_end(
            OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
        )
    assert exit_info.value.code == 1
    assert "1 of 2 runs failed: loss=mse" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["early_stopping.monitor=val_accuracy", "dataset.task=regression", "loss=mse"],
            "early_stopping.monitor=val_accuracy: the regression task has no such validation "
            "metric; choose one of val_loss, val_mse, val_mae (dataset=synthetic)",
        ),
        (["early_stopping.monitor=accuracy"], "choose one of val_loss, val_accuracy"),
        (["early_stopping.mode=up"], "early_stopping.mode must be min, max or null, got 'up'"),
        (
            ["schedule=plateau", "schedule.monitor=val_ndcg"],
            "schedule.monitor=val_ndcg: the classification task has no such validation metric",
        ),
    ],
)
def test_what_selection_watches_must_be_a_metric_of_the_task(overrides, fragment):
    from trainlab.experiment import build_experiment

    with pytest.raises(ConfigError) as error:
        build_experiment(compose_config(*overrides))
    assert fragment in str(error.value)


def test_selection_watches_the_loss_unless_told_and_infers_the_direction():
    from trainlab.experiment import build_experiment

    assert build_experiment(compose_config()).selection == ("loss", False)
    chosen = build_experiment(compose_config("early_stopping.monitor=val_accuracy"))
    assert chosen.selection == ("accuracy", True)
    told = compose_config("early_stopping.monitor=val_accuracy", "early_stopping.mode=min")
    assert build_experiment(told).selection == ("accuracy", False)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["optimizer=lbfgs", "optimizer.clip_grad_norm=1"], "optimizer=lbfgs cannot clip"),
        (["optimizer=lbfgs", "accumulate_steps=2"], "set accumulate_steps=1"),
        (
            ["optimizer.clip_grad_norm=0"],
            "optimizer.clip_grad_norm must be null or a number above 0",
        ),
        (["optimizer.clip_grad_norm=inf"], "must be null or a number above 0"),
        (["accumulate_steps=0"], "accumulate_steps must be >= 1"),
        (["batch_size=8", "accumulate_steps=9"], "accumulate_steps=9 splits each batch of 8"),
    ],
)
def test_clipping_and_accumulation_refuse_what_makes_no_sense(overrides, fragment):
    from trainlab.experiment import build_experiment

    with pytest.raises(ConfigError) as error:
        build_experiment(compose_config(*overrides))
    assert fragment in str(error.value)
