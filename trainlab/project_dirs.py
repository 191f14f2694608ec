"""A user's project folder: where their config files and their code are found.

Config files come from ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``; trainlab turns
the first into the second, so that the preflight, ``--help`` and Hydra all compose from the same
search path (after trainlab's own conf/: a built-in option keeps its name).

Code named by ``_target_`` is imported from the folder trainlab runs in, from each config
folder's parent (a project keeps ``conf/`` beside its ``.py`` files) and from PYTHONPATH. The
folders go into PYTHONPATH too, so sweep workers and torchrun's processes find the code as well.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trainlab.config_keys import override_key
from trainlab.errors import UserError

SEARCHPATH = "hydra.searchpath"
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def _pop_config_dirs(argv: list[str]) -> list[str]:
    """Remove ``--config-dir DIR`` / ``--config-dir=DIR`` / ``-cd DIR`` from ``argv``; the DIRs."""
    found, index = [], 1
    while index < len(argv):
        arg = argv[index]
        flag, _, value = arg.partition("=")
        if flag in CONFIG_DIR_FLAGS and value:
            found.append(value)
            del argv[index]
        elif arg in CONFIG_DIR_FLAGS:
            if index + 1 >= len(argv):
                raise UserError(f"{arg} needs a folder: {arg} <folder holding your conf groups>")
            found.append(argv[index + 1])
            del argv[index : index + 2]
        else:
            index += 1
    return found


def _searchpath_entries(override: str) -> list[str]:
    """The entries of a ``hydra.searchpath=[...]`` override, read as Hydra reads them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_override(override.lstrip("+")).value()
    except Exception:
        return []  # the preflight says what is wrong with it
    return [str(entry) for entry in value] if isinstance(value, list) else []


def _quoted(entry: str) -> str:
    """An entry Hydra reads back whole, whatever characters the folder's name holds."""
    return "'" + entry.replace("\\", "\\\\").replace("'", "\\'") + "'"


def config_dir_as_searchpath(argv: list[str]) -> None:
    """Rewrite ``--config-dir DIR`` in ``argv`` (sys.argv: the program first) as an entry of
    ``hydra.searchpath``; a folder that is not there is one line."""
    folders = _pop_config_dirs(argv)
    if not folders:
        return
    entries = []
    for folder in folders:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"--config-dir {folder}: no such folder; check the path")
        entries.append(f"file://{path}")
    given = [i for i, arg in enumerate(argv) if i and override_key(arg) == SEARCHPATH]
    if given:
        index = given[-1]
        entries = _searchpath_entries(argv[index]) + entries
        del argv[index]
    argv.append(f"{SEARCHPATH}=[{','.join(map(_quoted, entries))}]")


def code_folders(argv: list[str]) -> list[Path]:
    """Where ``_target_`` modules are imported from: the current folder and each config
    folder's parent (and the config folder itself)."""
    folders = [Path.cwd()]
    for arg in argv[1:]:
        if override_key(arg) == SEARCHPATH:
            for entry in _searchpath_entries(arg):
                if entry.startswith("file://"):
                    folder = Path(entry.removeprefix("file://")).expanduser().resolve()
                    folders += [folder.parent, folder]
    return list(dict.fromkeys(folders))


def add_code_folders(argv: list[str]) -> None:
    """Put the project's code folders on the import path, here and in child processes."""
    folders = [str(folder) for folder in code_folders(argv)]
    # First, as PYTHONPATH puts them in child processes and `python -m` puts the current folder.
    sys.path[:0] = [folder for folder in folders if folder not in sys.path]
    inherited = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*inherited, *folders]))


def as_typed(hydra_overrides: list[str]) -> list[str]:
    """A run's own config folders as a user types them (``--config-dir DIR``), for the commands
    trainlab suggests: the options they name are found again."""
    import shlex

    flags: list[str] = []
    for override in hydra_overrides:
        if override_key(override) != SEARCHPATH:
            continue
        entries = _searchpath_entries(override)
        if all(entry.startswith("file://") for entry in entries):
            flags += [f"--config-dir {shlex.quote(e.removeprefix('file://'))}" for e in entries]
        else:
            flags.append(shlex.quote(override))
    return flags
