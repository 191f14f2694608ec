"""The pieces of Hydra's private API trainlab relies on, imported in one place.

Hydra offers no public way to read its own command line, to expand a basic sweep the way its
sweeper will, or to skip the composition it makes only to read ``hydra.mode``;
``tests/test_hydra_internals.py`` fails when a Hydra release moves or changes them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import get_args_parser
from hydra.types import RunMode

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


@contextmanager
def mode_known(mode: RunMode | None) -> Iterator[None]:
    """Within this block Hydra takes ``mode`` as the config's ``hydra.mode`` instead of
    composing the whole config once more to read it (a fifth of a short run's time); for a
    config the caller has composed already, with the same overrides."""
    original = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: mode  # type: ignore[method-assign]
    try:
        yield
    finally:
        Hydra.get_mode = original  # type: ignore[method-assign]
