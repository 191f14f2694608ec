"""Hydra's private API that trainlab uses (trainlab/hydra_internals.py): this fails when a Hydra
release moves or changes it."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser

from trainlab.hydra_internals import (
    BASIC_SWEEPER,
    FLAGS,
    BasicSweeper,
    expand_basic_sweep,
    parse_command_line,
)


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
