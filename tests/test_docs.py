"""What README.md and docs/ claim, checked: the loss x task table, the CI test command, the
config options, and every documented command."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from scripts.loss_task_table import loss_task_table
from tests.helpers import map_in_workers

REPO = Path(__file__).resolve().parent.parent


def test_documented_loss_table_matches_the_registry():
    assert loss_task_table() in (REPO / "docs" / "configuration.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    test_command = readme.split("Run the tests:")[1].split("```bash\n")[1].split("\n")[0]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command == "python -m pytest"
    assert ci_lines[-1] == test_command


def test_every_config_option_has_code_and_every_registry_entry_a_config():
    from trainlab.data import DATASETS
    from trainlab.losses import LOSSES
    from trainlab.models import MODELS
    from trainlab.optim import OPTIMIZERS, SCHEDULES
    from trainlab.regularizers import REGULARIZERS

    registries = {
        "dataset": DATASETS,
        "model": MODELS,
        "loss": LOSSES,
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
        "regularizer": REGULARIZERS,
    }
    for group, registry in registries.items():
        files = {path.stem for path in (REPO / "conf" / group).glob("*.yaml")}
        user_parts = {name for name in files if "_target_: ???" in _option_text(group, name)}
        assert user_parts == ({"custom"} if group in ("model", "loss") else set()), group
        assert files - user_parts == set(registry), group
        for path in (REPO / "conf" / group).glob("*.yaml"):
            assert f"name: {path.stem}\n" in path.read_text(), path


def _option_text(group: str, name: str) -> str:
    return (REPO / "conf" / group / f"{name}.yaml").read_text()


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after ``heading``, without its header."""
    lines = text.split(heading, 1)[1].split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_readme_config_groups_table_lists_every_option():
    rows, group, listed = (
        _table_rows((REPO / "README.md").read_text(), "## Config groups"),
        "",
        set(),
    )
    for row in rows:
        group = row[0] or group
        listed.add((group, row[1]))
    groups = ("dataset", "model", "loss", "optimizer", "schedule", "regularizer")
    options = {(g, p.stem) for g in groups for p in (REPO / "conf" / g).glob("*.yaml")}
    assert listed == options


def test_readme_presets_table_names_every_preset_with_its_members():
    """Each preset composes, sweeps something, and has as many members as the table says."""
    from omegaconf import OmegaConf

    from trainlab.preflight import compose_overrides, sweep_members

    rows = _table_rows((REPO / "README.md").read_text(), "## Presets")
    counts = {row[0]: row[2] for row in rows}
    presets = {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")}
    assert set(counts) == presets
    plugins = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    for preset in sorted(presets):
        if preset == "optuna_search":
            if plugins:
                config = compose_overrides([f"+experiment={preset}"])
                assert counts[preset] == f"{config.hydra.sweeper.n_trials} trials"
            continue
        config = compose_overrides([f"+experiment={preset}"])
        assert OmegaConf.select(config, "hydra.sweeper.params"), preset
        assert counts[preset] == str(len(sweep_members(config, []))), preset


# ---- every command in README.md and docs/ runs as written ------------------------------------

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAMS = ("trainlab", "trainlab-report", "torchrun", "python", "pip", "tensorboard", "apt-get")


class Documented(NamedTuple):
    where: str  # file:line
    argv: list[str]
    error: str | None  # the error line the document shows for it, if any
    folder: str | None = None  # where it runs: a `cd DIR &&` before it, else an empty folder


def _blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """Fenced code blocks: (line number of the first line, lines), continuations joined."""
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        if not lines[index].startswith("```"):
            index += 1
            continue
        start, block = index + 1, []
        index += 1
        while not lines[index].startswith("```"):
            line = lines[index]
            while line.endswith("\\"):
                index += 1
                line = line[:-1] + " " + lines[index].strip()
            block.append(line)
            index += 1
        index += 1
        yield start + 1, block


def _error_shown(output: list[str]) -> str | None:
    """The error line a ``$ command`` block shows after the command, before the next one."""
    for line in output:
        if line.startswith("$ "):
            return None
        if line.startswith("trainlab: error:"):
            return line
    return None


def documented_commands() -> list[Documented]:
    found = []
    for document in DOCUMENTS:
        for first, block in _blocks(document.read_text()):
            for offset, line in enumerate(block):
                text = line.removeprefix("$ ").removeprefix("time ")
                if text.split(" ", 1)[0] not in (*PROGRAMS, "cd") or text.startswith("trainlab ━"):
                    continue  # output, not a command
                error = _error_shown(block[offset + 1 :]) if line.startswith("$ ") else None
                folder = None
                for command in text.split(" && "):
                    argv = shlex.split(command, comments=True)
                    if argv[0] == "cd":
                        folder = argv[1]
                        continue
                    where = f"{document.relative_to(REPO)}:{first + offset}"
                    found.append(Documented(where, argv, error, folder))
    return found


COMMANDS = list({tuple(c.argv): c for c in documented_commands()}.values())  # each once


def covering(members: list[list[str]] | None) -> list[list[str]] | None:
    """As few members of a full-product sweep as hold every swept value at least once (the
    i-th takes each key's i-th value): what the preflight finds wrong in a member is wrong
    in its values, and a 63-member preset would take 16 s to check whole."""
    if not members:
        return members
    values = [list(dict.fromkeys(column)) for column in zip(*members, strict=True)]
    wanted = [[column[i % len(column)] for column in values] for i in range(max(map(len, values)))]
    return [member for member in members if member in wanted]


def test_the_documents_hold_commands_and_the_readme_is_a_quick_start():
    assert len(COMMANDS) > 40
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def check(command: Documented) -> str:
    """What checking one command found: "ok", "skip: why" or the problem. Each command is
    checked as its program checks it before doing anything: trainlab's preflight composes the
    config (every swept value of a sweep) and builds every part; the other programs' options
    and files must exist. An error the document shows must be the one the command gives."""
    program, *args = command.argv
    if program == "torchrun":
        program, args = "trainlab", args[args.index("trainlab") + 1 :]
    if program == "trainlab":
        return _check_trainlab(args, command.error)
    if program == "trainlab-report":
        from trainlab.report import parser

        try:
            parser().parse_args(args)
        except SystemExit:
            return f"trainlab-report does not take {args}"
        return "ok"
    if program == "python":
        known = args == ["-m", "pytest"] or args[0] == "-c" or (REPO / args[0]).is_file()
        return "ok" if known else f"no such file: {args[0]}"
    if program == "pip":
        extras = re.findall(r"\.\[([\w,]+)\]", " ".join(args))
        pyproject = (REPO / "pyproject.toml").read_text()
        missing = [x for e in extras for x in e.split(",") if f"\n{x} = [" not in pyproject]
        return f"no such extra: {missing}" if missing else "ok"
    return "ok" if program in ("tensorboard", "apt-get") else f"unknown program {program}"


def _check_trainlab(args: list[str], error: str | None) -> str:
    from trainlab import preflight
    from trainlab.project_dirs import add_code_folders, config_dir_as_searchpath

    argv = ["trainlab", *args]
    config_dir_as_searchpath(argv)  # as trainlab.cli.main does first
    add_code_folders(argv)
    args = argv[1:]
    members = preflight.sweep_members
    if error is None:  # (an error names how many members are invalid: then all are checked)
        preflight.sweep_members = lambda *a: covering(members(*a))
    try:
        problem = preflight.check_command_line(args).problem
    finally:
        preflight.sweep_members = members
    plugins = importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None
    if problem is not None and "pip install" in problem and not plugins:
        return "skip: needs the sweep extra"
    if problem is not None and "trainlab[tables]" in problem:
        return "skip: needs the tables extra"
    if any(a.startswith("device=cuda") for a in args) and problem and "CUDA" in problem:
        return "skip: needs a CUDA GPU"
    if error is None:
        return "ok" if problem is None else problem
    said = error.removeprefix("trainlab: error: ").split("...")[0].rstrip()
    if problem is None:  # a refusal that needs the folder the document describes: not here
        needs_folder = any(a.startswith(("resume=", "hydra.run.dir=")) for a in args)
        return "ok" if needs_folder else f"no error, where the document shows: {error}"
    return "ok" if problem.startswith(said) else f"{problem!r} is not what it shows: {said!r}"


def _check_in_folder(command: Documented) -> str:
    """check(command) in an empty working folder of its own (a pool worker's)."""
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        os.chdir(REPO / command.folder if command.folder else folder)
        os.environ["TRAINLAB_DATA"] = folder  # a table's decoded cache goes there
        with contextlib.redirect_stderr(io.StringIO()):
            return check(command)


@pytest.fixture(scope="module")
def checked() -> dict[tuple[str, ...], str]:
    """Every documented command checked, on both cores."""
    found = map_in_workers(_check_in_folder, COMMANDS)
    return dict(zip((tuple(c.argv) for c in COMMANDS), found, strict=True))


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c.argv)[:80] for c in COMMANDS])
def test_every_documented_command_runs_as_written(command, checked):
    found = checked[tuple(command.argv)]
    if found.startswith("skip: "):
        pytest.skip(found.removeprefix("skip: "))
    assert found == "ok", f"{command.where}: {' '.join(command.argv)}: {found}"
