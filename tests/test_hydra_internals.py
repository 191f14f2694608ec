"""Hydra's private API that trainlab uses (trainlab/hydra_internals.py): this fails when a Hydra
release moves or changes it."""

from __future__ import annotations

import inspect

from hydra._internal import utils as hydra_utils
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

from trainlab.hydra_internals import (
    BASIC_SWEEPER,
    FLAGS,
    BasicSweeper,
    Hydra,
    expand_basic_sweep,
    mode_known,
    parse_command_line,
)
from trainlab.preflight import check_command_line


def test_hydras_command_line_parser_has_the_flags_trainlab_reads():
    args = parse_command_line(["-m", "--cfg", "job", "loss=mse,huber", "seed=1"])
    for flag in FLAGS:
        getattr(args, flag)  # an AttributeError names the one Hydra renamed
    assert args.multirun and args.cfg == "job" and args.overrides == ["loss=mse,huber", "seed=1"]


def test_the_basic_sweeper_expands_members_in_hydras_order():
    assert f"{BasicSweeper.__module__}.{BasicSweeper.__qualname__}" == BASIC_SWEEPER
    parsed = OverridesParser.create().parse_overrides(["loss=mse,huber", "seed=0,1", "epochs=3"])
    assert expand_basic_sweep(parsed) == [
        ["loss=mse", "seed=0", "epochs=3"],
        ["loss=mse", "seed=1", "epochs=3"],
        ["loss=huber", "seed=0", "epochs=3"],
        ["loss=huber", "seed=1", "epochs=3"],
    ]


def test_hydra_composes_only_to_read_the_mode_that_the_preflight_hands_it():
    """Hydra's main composes the whole config once to read hydra.mode (get_mode), then again to
    run; mode_known gives it the mode the preflight read from the same composition."""
    assert list(inspect.signature(Hydra.get_mode).parameters) == [
        "self",
        "config_name",
        "overrides",
    ]
    assert "hydra.get_mode(config_name=config_name, overrides=overrides)" in inspect.getsource(
        hydra_utils._run_hydra
    )
    assert check_command_line(["epochs=3"]) == (None, True, None)
    multirun = check_command_line(["hydra.mode=MULTIRUN", "hydra.sweep.dir=/nonexistent/sweep"])
    assert multirun.composed and multirun.mode == RunMode.MULTIRUN
    with mode_known(RunMode.MULTIRUN):
        assert Hydra.get_mode(None, "config", []) == RunMode.MULTIRUN  # type: ignore[arg-type]
    assert Hydra.get_mode.__qualname__ == "Hydra.get_mode"  # put back


def test_a_config_composed_again_is_a_copy_of_the_first_composition(monkeypatch):
    """compositions_shared: Hydra's loader composes each (config, overrides, mode) once; later
    requests get equal, independent copies."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import OmegaConf

    from trainlab.hydra_internals import compositions_shared
    from trainlab.preflight import compose_overrides

    fresh = compose_overrides(["loss=huber", "hydra.mode=RUN"])
    real = ConfigLoaderImpl.load_configuration
    made = []
    monkeypatch.setattr(
        ConfigLoaderImpl, "load_configuration", lambda *a, **k: made.append(1) or real(*a, **k)
    )
    with compositions_shared():
        first = compose_overrides(["loss=huber", "hydra.mode=RUN"])
        again = compose_overrides(["loss=huber", "hydra.mode=RUN"])
        compose_overrides(["loss=mse", "hydra.mode=RUN"])
    assert len(made) == 2  # huber once, mse once
    assert OmegaConf.to_yaml(again) == OmegaConf.to_yaml(first) == OmegaConf.to_yaml(fresh)
    again.loss.delta = 9.0
    assert first.loss.delta == 1.0  # a copy, not the same object


def test_a_run_and_each_sweep_member_are_composed_once(tmp_path, monkeypatch):
    """The preflight composes with the hydra.mode override Hydra adds, and sweep members in
    Hydra's order of overrides, so Hydra's own compositions are the preflight's."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from trainlab import cli

    real = ConfigLoaderImpl.load_configuration
    made: list[tuple] = []
    monkeypatch.setattr(
        ConfigLoaderImpl,
        "load_configuration",
        lambda self, name, overrides, *a, **k: (
            made.append(tuple(overrides)) or real(self, name, overrides, *a, **k)
        ),
    )
    monkeypatch.chdir(tmp_path)
    command = ["trainlab", "-m", "loss=mse,huber", "dataset.train_size=64", "epochs=1",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", "dataset.task=regression"]  # fmt: skip
    monkeypatch.setattr("sys.argv", command)
    cli.main()
    assert len(made) == len(set(made)) == 4  # fixed part, 2 members, Hydra's sweep config
