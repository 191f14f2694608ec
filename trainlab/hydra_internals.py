"""The pieces of Hydra's private API trainlab relies on, imported in one place.

Hydra offers no public way to read its own command line, to expand a basic sweep the way its
sweeper will, to skip the composition it makes only to read ``hydra.mode``, or to reuse a config
already composed;
``tests/test_hydra_internals.py`` fails when a Hydra release moves or changes them.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
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


@contextmanager
def compositions_shared() -> Iterator[None]:
    """Within this block Hydra composes each config (name, overrides, run mode, search path)
    once and hands out copies: the preflight composes a run, and every member of a sweep, just
    before Hydra composes the same again, and a composition takes a fifth of a second."""
    original = ConfigLoaderImpl.load_configuration
    composed: dict[tuple, Any] = {}

    def load_configuration(
        self: ConfigLoaderImpl,
        config_name: str | None,
        overrides: list[str],
        run_mode: RunMode,
        from_shell: bool = True,  # (only words Hydra's error messages)
        validate_sweep_overrides: bool = True,
    ) -> Any:
        search_path = tuple((p.provider, p.path) for p in self.config_search_path.get_path())
        key = (config_name, tuple(overrides), run_mode, validate_sweep_overrides, search_path)
        if key not in composed:
            composed[key] = original(
                self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides
            )
        return copy.deepcopy(composed[key])  # Hydra fills in each run's own hydra.* fields

    ConfigLoaderImpl.load_configuration = load_configuration  # type: ignore[method-assign]
    try:
        yield
    finally:
        ConfigLoaderImpl.load_configuration = original  # type: ignore[method-assign]
