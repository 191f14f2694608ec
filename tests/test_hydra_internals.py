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
