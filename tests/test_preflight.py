"""Command-line checks as units: overrides Hydra cannot read or that repeat or delete a key,
output folders the file system refuses, the sweep plugins' own settings."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trainlab.config_keys import shell_override
from trainlab.preflight import check_output_folder, check_overrides, check_plugins


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=1", "seed=2"], "seed is given 2 times (seed=1, seed=2) and Hydra would keep only"),
        (["seed=0,1", "seed=2,3"], "seed is given 2 times"),
        (["loss=mse", "+loss=huber"], "loss is given 2 times"),
        (["~optimizer.lr"], "~optimizer.lr deletes a setting"),
        (["~epochs"], "~epochs deletes a setting"),
        (["optimizer.lr=\uff11e-3"], "Hydra cannot read this override (a character it does not accept); write key=value, and quote"),
        (["loss=mse;rm"], "key='...' (in the shell: \"key='...'\")"),
        (["loss=$(ls)"], "loss=$(ls): Hydra cannot read this override (mismatched input"),
        (["loss"], "loss: no value given (write overrides as key=value"),
    ],
)  # fmt: skip
def test_overrides_that_cannot_mean_what_they_say_are_refused(overrides, message):
    problem = check_overrides(overrides)
    assert problem is not None and message in problem


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss=huber", "loss.delta=2", "optimizer.lr=0.01"],
        ["+experiment=lr_sweep", "hydra.sweep.dir=x"],
        ["loss='mse;rm'"],  # quoted: read as it is
    ],
)
def test_ordinary_overrides_pass(overrides):
    assert check_overrides(overrides) is None


def test_output_folders_the_file_system_refuses(tmp_path):
    (tmp_path / "a-file").write_text("x")
    long_name = check_output_folder(tmp_path / ("x" * 300) / "run", "hydra.run.dir")
    assert (
        long_name is not None and "more than the file system's 255; use a shorter path" in long_name
    )
    under_a_file = check_output_folder(tmp_path / "a-file" / "run", "hydra.run.dir")
    assert under_a_file is not None and "a-file is a file, not a folder" in under_a_file
    resumed_file = check_output_folder(tmp_path / "a-file", "resume")
    assert (
        resumed_file
        == f"resume={tmp_path / 'a-file'} is a file, not a run folder; give the folder of an earlier run"
    )
    assert check_output_folder(tmp_path / "new" / "run", "hydra.run.dir") is None


def test_output_folders_on_file_systems_that_take_no_files(tmp_path, monkeypatch):
    kernels = check_output_folder(Path("/proc/trainlab-run"), "hydra.run.dir")
    assert kernels is not None and "/proc is on a file system of the kernel's" in kernels
    read_only = os.statvfs_result((4096, 4096, 100, 50, 50, 10, 5, 5, os.ST_RDONLY, 255))
    monkeypatch.setattr(os, "statvfs", lambda path: read_only)
    mounted = check_output_folder(tmp_path / "run", "hydra.run.dir")
    assert mounted == (
        f"hydra.run.dir={tmp_path / 'run'} cannot be created ({tmp_path} is on a read-only file "
        "system); set hydra.run.dir to a folder you can write to"
    )
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a user without the right
    denied = check_output_folder(tmp_path / "run", "hydra.run.dir")
    assert denied is not None and f"({tmp_path} is not a folder you can write to)" in denied


@pytest.mark.parametrize(
    ("node", "settings", "message"),
    [
        ("sweeper", {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "max_batch_size": 0}, "hydra.sweeper.max_batch_size must be null or a whole number >= 1, got 0"),
        ("launcher", {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 0}, "hydra.launcher.n_jobs must be a whole number >= 1"),
        ("sweeper", {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "n_trials": -3}, "hydra.sweeper.n_trials must be a whole number >= 1, got -3"),
        ("launcher", {"_target_": "hydra_plugins.trainlab_launchers.TrainlabSlurmLauncher", "timeout_min": 0}, "hydra.launcher.timeout_min must be a whole number of minutes >= 1"),
    ],
)  # fmt: skip
def test_the_sweep_plugins_settings_are_checked(node, settings, message):
    problem = check_plugins(OmegaConf.create({node: settings}))
    assert problem is not None and message in problem


def test_plugin_settings_in_range_pass():
    hydra = OmegaConf.create(
        {
            "launcher": {"_target_": "x.JoblibLauncher", "n_jobs": -1},
            "sweeper": {"_target_": "x.BasicSweeper", "max_batch_size": None},
        }
    )
    assert check_plugins(hydra) is None


def test_a_suggested_override_is_quoted_when_hydra_would_read_its_value_as_syntax():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert shell_override("resume", "outputs/runs/2026-11-30/10-00-00") == (
        "resume=outputs/runs/2026-11-30/10-00-00"
    )
    member = "outputs/sweeps/s/loss=mse,seed=0"
    suggested = shell_override("resume", member)
    assert suggested == f"\"resume='{member}'\""
    as_the_shell_passes_it = shlex.split(suggested)
    [parsed] = OverridesParser.create().parse_overrides(as_the_shell_passes_it)
    assert parsed.value() == member
