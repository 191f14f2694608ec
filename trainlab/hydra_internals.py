"""The two pieces of Hydra's private API trainlab relies on, imported in one place.

Hydra offers no public way to read its own command line or to expand a basic sweep the way its
sweeper will; ``tests/test_hydra_internals.py`` fails when a Hydra release moves or changes them.
"""

from __future__ import annotations

import argparse
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# The flags of Hydra's parser trainlab reads (an AttributeError names a renamed one).
FLAGS = (
    "overrides", "help", "hydra_help", "info", "shell_completion", "config_dir", "config_path",
    "config_name", "experimental_rerun", "cfg", "multirun",
)  # fmt: skip


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """Hydra's reading of ``argv``: its flags and the overrides."""
    args, _ = get_args_parser().parse_known_args(argv)
    return args


def expand_basic_sweep(overrides: list[Any]) -> list[list[str]]:
    """Every member's overrides, in the order Hydra's basic sweeper runs them."""
    return [
        list(member) for batch in BasicSweeper.split_arguments(overrides, None) for member in batch
    ]
