"""Everything checked before a job starts, single runs and every member of a sweep: one line
per problem, with a did-you-mean, and nothing written.

Hydra's own composition errors are several lines long and name no likely fix; these turn them
into ``loss=hubr: no such option; did you mean huber?``. Torch is imported only to check sweep
members (a single run builds its parts once, as it starts).
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from trainlab import resolvers  # noqa: F401  (conf/ names them; registered on import)
from trainlab.config_keys import override_key
from trainlab.errors import UserError, first_line
from trainlab.fused_groups import Grouping, group_members, is_fused
from trainlab.hydra_internals import BASIC_SWEEPER, expand_basic_sweep, parse_command_line
from trainlab.settings import did_you_mean

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
Compose = Callable[[list[str]], DictConfig]
# Config groups a user may remove with ~group (and then must choose again).
DELETABLE = ("dataset", "model", "loss", "optimizer", "schedule", "regularizer", "experiment")


def compose_overrides(overrides: list[str]) -> DictConfig:
    """The config (with its hydra node) that Hydra composes for ``overrides``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def task_config(config: DictConfig) -> DictConfig:
    """A composed config as the task function sees it: without the hydra node."""
    return OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])


class Checked(NamedTuple):
    """What the preflight found: ``problem``, one line (None: none found); and when it composed
    the config as Hydra is about to, the config's ``hydra.mode``, which Hydra would otherwise
    compose the whole config once more to learn."""

    problem: str | None
    composed: bool = False
    mode: RunMode | None = None


def check_command_line(argv: list[str]) -> Checked:
    """Compose the config as Hydra is about to; a mistake becomes one line.

    For a sweep, the fixed overrides are composed first (as Hydra does), then every member.
    """
    args = parse_command_line(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_dir:
        return Checked(None)  # Hydra's own modes, or a config folder of the user's: Hydra reports
    if args.config_path or args.config_name or args.experimental_rerun:
        return Checked(None)
    if args.cfg and args.multirun:  # Hydra would raise a ValueError with a traceback
        return Checked(
            "--cfg shows one run's config and cannot be combined with -m; drop -m (a sweep's "
            "launcher shows with: trainlab hydra/launcher=NAME --cfg hydra -p hydra.launcher)"
        )
    overrides = list(args.overrides)
    problem = check_overrides(overrides)
    if problem is not None:
        return Checked(problem)
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not (args.multirun and o.is_sweep_override())]
    # Hydra adds hydra.mode=RUN (or MULTIRUN) to the overrides when none sets it; composing with
    # it too makes the preflight's compositions the ones Hydra reuses (compositions_shared).
    mode_given = any(override_key(o) == "hydra.mode" for o in overrides)
    added = [] if mode_given or args.cfg else [f"hydra.mode={_mode_word(args.multirun)}"]
    try:
        config = compose_overrides(fixed + added)
    except Exception as error:
        return Checked(explain(error, fixed, compose_overrides))
    problem = _check_composed(config, overrides + added, args.multirun, bool(args.cfg))
    return Checked(problem, composed=True, mode=config.hydra.mode if mode_given else None)


def _mode_word(multirun: bool) -> str:
    return "MULTIRUN" if multirun else "RUN"


def _check_composed(
    config: DictConfig, overrides: list[str], multirun: bool, show_only: bool
) -> str | None:
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if not multirun and config.get("resume") is not None:
        key = "resume"  # the run folder is the one resumed
        if not str(config.resume).strip():
            return "resume= is empty; give the folder of the run to continue (resume=<its folder>)"
    try:
        output = config.hydra.sweep.dir if multirun else config.hydra.run.dir
    except Exception as error:  # an interpolation in the folder's name that resolves to nothing
        return f"{key}: {first_line(error)}; fix the ${{...}} in it"
    problem = check_output_folder(Path(str(output)), key) or check_plugins(config.hydra)
    if problem is not None or show_only:
        return problem
    if multirun:
        from trainlab.sweep import sweep_in_use

        busy = sweep_in_use(Path(str(output)))
        if busy is not None:
            return busy
        members = sweep_members(config, overrides)
        return None if members is None else check_sweep(members, compose_overrides, config)
    if config.get("resume") is not None:
        return None  # the run's own config is checked as it resumes
    from trainlab.experiment import build_experiment  # (imports torch, as the run will)

    try:
        build_experiment(task_config(config))  # every part, as the run will build it
    except UserError as error:
        return str(error)
    return None


# ---- the overrides themselves --------------------------------------------------------------


def check_overrides(overrides: list[str]) -> str | None:
    """Each override can be read, is given once, and deletes no setting."""
    parser = OverridesParser.create()
    keys: dict[str, list[str]] = {}
    for override in overrides:
        try:
            [parsed] = parser.parse_overrides([override])
        except OverrideParseException as error:
            return _unreadable(override, error)
        keys.setdefault(parsed.get_key_element().lstrip("+~"), []).append(override)
        key = parsed.key_or_group
        if parsed.is_delete() and key not in DELETABLE and not key.startswith("hydra"):
            return (
                f"~{key} deletes a setting, and torch would then use a default the run's records "
                f"do not show; set it instead ({key}=<value>)"
            )
    for key, given in keys.items():
        if len(given) > 1:
            return (
                f"{key} is given {len(given)} times ({', '.join(given)}) and Hydra would keep "
                f"only the last; give it once (to sweep over several values: -m {key}=a,b)"
            )
    return None


def _unreadable(override: str, error: OverrideParseException) -> str:
    text = str(error)
    if "missing EQUAL" in text:
        return f"{override}: no value given (write overrides as key=value, e.g. optimizer.lr=0.01)"
    detail = " ".join(line.strip() for line in text.splitlines()[:1] if line.strip())
    detail = re.sub(r"^LexerNoViableAltException: .*", "a character it does not accept", detail)
    return (
        f"{override}: Hydra cannot read this override ({detail}); write key=value, and quote a "
        f"value holding spaces or characters such as ; $ ( ): key='...' (in the shell: "
        f"\"key='...'\")"
    )


# ---- the output folder and the sweep plugins' settings ---------------------------------------


def check_output_folder(folder: Path, key: str) -> str | None:
    """The run folder must be creatable: names the file system takes, and its nearest existing
    parent a writable folder."""
    parent = folder.absolute()
    while not _exists(parent):
        parent = parent.parent
    limit = _name_limit(parent)
    too_long = [part for part in folder.parts if len(part.encode()) > limit]
    if too_long:
        return (
            f"{key}={folder}: the name {too_long[0][:40]}... is {len(too_long[0].encode())} bytes, "
            f"more than the file system's {limit}; use a shorter path"
        )
    if key == "resume" and parent == folder.absolute() and not parent.is_dir():
        return f"resume={folder} is a file, not a run folder; give the folder of an earlier run"
    what = _why_unwritable(parent)
    if what is not None:
        return f"{key}={folder} cannot be created ({parent} {what}); set {key} to a folder you can write to"
    return None


def _why_unwritable(folder: Path) -> str | None:
    """Why nothing can be made in ``folder`` (None: something can), without writing there."""
    if not folder.is_dir():
        return "is a file, not a folder"
    try:
        system = os.statvfs(folder)
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    if system.f_flag & os.ST_RDONLY:
        return "is on a read-only file system"
    if system.f_blocks == 0:  # /proc, /sys: the kernel's, not files
        return "is on a file system of the kernel's, which holds no files"
    if not os.access(folder, os.W_OK):
        return "is not a folder you can write to"
    return None


def _exists(path: Path) -> bool:
    try:
        return path.exists() or path.is_symlink()
    except OSError:  # a name too long, a loop of links: nothing the run could use is there
        return False


def _name_limit(existing: Path) -> int:
    try:
        return os.pathconf(existing if existing.is_dir() else existing.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _whole(minimum: int) -> Callable[[object], bool]:
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# What each plugin would otherwise reject with a traceback (or, for n_jobs=0, hang on):
# (launcher or sweeper class name, setting, test, what it must be).
PLUGIN_SETTINGS = [
    ("BasicSweeper", "max_batch_size", lambda v: v is None or _whole(1)(v), "null or a whole number >= 1"),
    ("JoblibLauncher", "n_jobs", lambda v: isinstance(v, int) and v != 0 and v >= -(os.cpu_count() or 1), "a whole number >= 1 (or -1 for every core)"),
    ("OptunaSweeper", "n_trials", _whole(1), "a whole number >= 1"),
    ("OptunaSweeper", "n_jobs", _whole(1), "a whole number >= 1"),
    ("SlurmLauncher", "timeout_min", _whole(1), "a whole number of minutes >= 1"),
    ("SlurmLauncher", "array_parallelism", _whole(1), "a whole number >= 1"),
    ("SlurmLauncher", "max_num_timeout", _whole(0), "a whole number >= 0"),
    ("SlurmLauncher", "cpus_per_task", lambda v: v is None or _whole(1)(v), "null or a whole number >= 1"),
    ("LocalLauncher", "timeout_min", _whole(1), "a whole number of minutes >= 1"),
]  # fmt: skip


def check_plugins(hydra: DictConfig) -> str | None:
    """The launcher's and sweeper's own settings, which Hydra passes on unchecked."""
    for node_name in ("launcher", "sweeper"):
        node = hydra.get(node_name) or {}
        target = str(node.get("_target_", ""))
        for plugin, key, valid, expected in PLUGIN_SETTINGS:
            if target.endswith(plugin) and key in node and not valid(node[key]):
                return (
                    f"hydra.{node_name}.{key} must be {expected}, got {node[key]!r} "
                    f"(set hydra.{node_name}.{key}=...)"
                )
    return None


# ---- composition errors, explained -------------------------------------------------------------


# Options that Hydra's plugins bring (pip install -e ".[sweep]"), by group.
PLUGIN_OPTIONS = {
    "hydra/launcher": ("joblib", "submitit_slurm", "submitit_local", "slurm", "gpus"),
    "hydra/sweeper": ("optuna",),
    "experiment": ("optuna_search",),
}


def _missing_option(error: MissingConfigException) -> str:
    group, _, name = (error.missing_cfg_file or "").rpartition("/")
    options = list(error.options or [])
    key = f"+{group}" if group == "experiment" else group
    if name in PLUGIN_OPTIONS.get(group, ()):
        return (
            f"{key}={name} comes with Hydra's sweep plugins, which are not installed here; "
            "install them with: pip install -e '.[sweep]'"
        )
    return (
        f"{key}={name}: no such option{did_you_mean(name, options)} (options: {', '.join(options)})"
    )


def _unknown_key(key: str, overrides: list[str], compose: Compose) -> str:
    group = Path(CONFIG_DIR) / key
    if group.is_dir():  # a group without a default (experiment): it is added, with +
        options = sorted(path.stem for path in group.glob("*.yaml"))
        given = next((o.split("=", 1)[1] for o in overrides if override_key(o) == key), "NAME")
        return (
            f"{key}={given}: {key} has no default, so it is chosen with a +: +{key}={given} "
            f"(options: {', '.join(options)})"
        )
    parent, _, leaf = key.rpartition(".")
    without = [o for o in overrides if override_key(o) != key]
    try:
        node = compose(without)
        keys = OmegaConf.select(node, parent) if parent else node
    except Exception:
        keys = None
    known = [str(k) for k in keys if k != "hydra"] if isinstance(keys, DictConfig) else []
    hint = did_you_mean(leaf, known)
    if hint:
        hint = hint.replace("did you mean ", f"did you mean {parent + '.' if parent else ''}")
    where = "the config"
    if parent and isinstance(keys, DictConfig):
        where = f"{parent}={keys['name']}" if "name" in keys else parent
    listing = f" ({where} has: {', '.join(known)})" if known else ""
    if "name" in known and not hint:  # e.g. -m schedule=cosine,step schedule.min_lr=0
        listing += (
            f"; a key of other {parent} options is set with ++{key}=... in a sweep (Hydra "
            f"first composes the default {parent}, which lacks it)"
        )
    return f"{key}: no such key{hint}{listing}"


def explain(error: Exception, overrides: list[str], compose: Compose) -> str:
    """One line saying which override is wrong and what was probably meant."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        return _missing_option(error)
    first = first_line(error) or repr(error)
    if isinstance(error, OverrideParseException):
        return f"{first} (write overrides as key=value, e.g. optimizer.lr=0.01)"
    match = re.match(r"Could not override '([^']+)'", first)
    if match:
        return _unknown_key(match.group(1), overrides, compose)
    return first


# ---- sweeps ------------------------------------------------------------------------------------


def sweep_members(config: DictConfig, overrides: list[str]) -> list[list[str]] | None:
    """Each member's overrides, as Hydra's basic sweeper will expand them (its
    ``hydra.sweeper.params`` first); None for other sweepers (Optuna picks members as it goes).
    """
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    # In Hydra's order: its own overrides first, then the sweeper's member (so that Hydra's
    # composition of each member is the one the preflight made: hydra_internals shares them).
    hydra = [o.input_line for o in parsed if o.is_hydra_override()]
    task = [o.input_line for o in parsed if not o.is_hydra_override()]
    return [
        [*hydra, *member] for member in expand_basic_sweep(parser.parse_overrides([*params, *task]))
    ]


def check_sweep(
    members: Sequence[list[str]], compose: Compose, config: DictConfig | None = None
) -> str | None:
    """Check every member before any runs: print the plan, or the invalid members and a line.
    (``config``: the sweep's own, whose launcher may say how members train together.)"""
    if not members:
        return "the sweep has no members (an empty range or list?); give each swept key a value"
    checked, problems = check_members(members, compose)
    if problems:
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return (
            f"{len(problems)} of {len(members)} sweep members are invalid (listed above); "
            "nothing was run. Fix them and run the sweep again"
        )
    line = describe_actions(Counter(action for action, _ in checked))
    if config is not None and is_fused(config.hydra.launcher):
        line += f"; hydra/launcher=fused: {_grouping(checked, config).describe()}"
    print(f"trainlab: {line}", flush=True)
    return None


def _grouping(checked: list[tuple[str, DictConfig]], config: DictConfig) -> Grouping:
    done = [index for index, (action, _) in enumerate(checked) if action == "done"]
    tasks = [OmegaConf.to_container(task, resolve=True) for _, task in checked]
    return group_members(tasks, int(config.fused.max_members), done)


def check_members(
    members: Sequence[list[str]], compose: Compose
) -> tuple[list[tuple[str, DictConfig]], list[str]]:
    """Compose and check every member; return what each valid one will do (with its task
    config) and the invalid ones."""
    checked: list[tuple[str, DictConfig]] = []
    problems: list[str] = []
    folders: dict[Path, str] = {}
    for index, overrides in enumerate(members):
        name = ",".join(o for o in overrides if not o.startswith("hydra.")) or f"run{index}"
        try:
            member = compose(list(overrides))
        except Exception as error:  # Hydra composition: unknown option or key, bad syntax
            problems.append(f"{name}: {explain(error, list(overrides), compose)}")
            continue
        try:
            checked.append(_check_member(member, index, overrides, folders, name))
        except UserError as error:
            problems.append(f"{name}: {error}")
        except Exception as error:  # an OmegaConf or torch error the checks did not foresee
            problems.append(f"{name}: {type(error).__name__}: {first_line(error)}")
    return checked, problems


def _check_member(
    member: DictConfig, index: int, overrides: list[str], folders: dict[Path, str], name: str
) -> tuple[str, DictConfig]:
    """What one member will do in its folder, and its task config; a UserError when it
    cannot run."""
    from trainlab.experiment import build_experiment, check_data_parallel
    from trainlab.run_folder import preview

    with read_write(member), open_dict(member):
        member.hydra.job.num = index
    run_dir = Path(member.hydra.sweep.dir) / str(member.hydra.sweep.subdir)
    if run_dir in folders:
        raise UserError(
            f"it would share its folder {run_dir} with {folders[run_dir]}; keep "
            "${hydra.job.override_dirname} or ${hydra.job.num} in hydra.sweep.subdir"
        )
    folders[run_dir] = name
    task = task_config(member)
    build_experiment(task)
    world = member_processes(member.hydra.launcher)
    if world > 1:
        check_data_parallel(task, world)
    return preview(task, run_dir, list(overrides)), task


def member_processes(launcher: DictConfig) -> int:
    """How many processes train each member: a submitit launcher starts nodes x tasks_per_node
    tasks per job (hydra/launcher=slurm: one per GPU), which train one run together."""
    if "tasks_per_node" not in launcher:  # a launcher that runs each member in one process
        return 1
    tasks, nodes = launcher.tasks_per_node, launcher.get("nodes", 1)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (tasks, nodes)):
        raise UserError(
            f"hydra.launcher.tasks_per_node={tasks} and hydra.launcher.nodes={nodes} must be "
            "whole numbers of at least 1 (on nodes without GPUs: "
            "hydra.launcher.gpus_per_node=null hydra.launcher.tasks_per_node=1)"
        )
    return tasks * nodes


def describe_actions(actions: Counter) -> str:
    total = sum(actions.values())
    parts = [f"{actions[a]} {a}" for a in ("done", "resume", "rerun", "new") if actions[a]]
    return f"{total} run{'' if total == 1 else 's'}: {', '.join(parts)}"
