"""What to do with a run folder that already exists: skip it, resume it, or run it again.

A run folder holds ``.hydra/config.yaml`` (what it runs), ``metrics.json`` (how far it got)
and ``checkpoint.pt`` (where to continue). ``trainlab resume=DIR`` and a sweep re-run into
the same folder both decide from these.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from trainlab.checkpoint import CHECKPOINT_NAME
from trainlab.errors import UserError
from trainlab.files import read_json
from trainlab.provenance import RUNTIME_ONLY, config_hash

FINISHED = ("completed", "early_stopped", "diverged")
# What a resume may change: none of them alters the numbers already computed.
CHANGEABLE_ON_RESUME = ("epochs", "cpu_threads", "checkpoint.every_steps")
RunState = Literal["new", "done", "resume", "rerun", "busy"]


def _alive(metrics: Mapping[str, Any]) -> bool:
    """Whether the process that wrote a ``running`` metrics.json still runs (on this host)."""
    pid = metrics.get("pid")
    if metrics.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def run_state(run_dir: Path) -> RunState:
    """``done``: finished; ``resume``: stopped or failed after a checkpoint; ``rerun``:
    failed or stopped before its first checkpoint; ``busy``: another process is
    running it; ``new``: nothing there yet."""
    metrics = read_json(run_dir / "metrics.json")
    if metrics is None:  # nothing there, or a run killed as it started (.hydra/ written)
        started = [run_dir / CHECKPOINT_NAME, run_dir / ".hydra" / "config.yaml"]
        return "rerun" if any(path.exists() for path in started) else "new"
    if metrics.get("status") in FINISHED:
        return "done"
    if metrics.get("status") == "running" and _alive(metrics):
        return "busy"
    resumable = metrics.get("status") in ("running", "interrupted") or metrics.get("resumable")
    if resumable and (run_dir / CHECKPOINT_NAME).exists():
        return "resume"
    return "rerun"


def saved_config(run_dir: Path) -> DictConfig:
    """The config a run folder was started with (``.hydra/config.yaml``)."""
    if not run_dir.is_dir():
        raise UserError(f"resume={run_dir}: no such run folder; give the folder of an earlier run")
    path = run_dir / ".hydra" / "config.yaml"
    try:
        config = OmegaConf.load(path)
    except FileNotFoundError:
        raise UserError(
            f"resume={run_dir}: no trainlab run there (no .hydra/config.yaml); give the "
            "folder of an earlier run, e.g. outputs/runs/<date>/<time>"
        ) from None
    except Exception as error:
        raise UserError(f"{path} is unreadable ({error}); the run cannot be resumed") from None
    if not isinstance(config, DictConfig):
        raise UserError(f"{path} is not a config mapping; the run cannot be resumed")
    return config


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer.lr": 0.01, ...}`` from nested mappings."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differences(
    saved: Mapping[str, Any], given: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
    """``key (saved X, given Y)`` for every key whose value differs, ``ignore`` aside."""
    ignored = tuple(ignore)
    old, new = flatten(saved), flatten(given)
    found = []
    for key in sorted(old.keys() | new.keys()):
        if any(key == name or key.startswith(f"{name}.") for name in ignored):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            found.append(
                f"{key} (run has {old.get(key, '<absent>')}, given {new.get(key, '<absent>')})"
            )
    return found


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys (or groups) a list of command-line overrides sets."""
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        sets = "=" in override or override.startswith("~")  # ~key deletes: a change too
        if sets and not key.startswith("hydra.") and key != "resume":
            keys.append(key.replace("/", "."))
    return keys


def config_for_resume(run_dir: Path, given: DictConfig, overrides: list[str]) -> DictConfig:
    """The saved config, with the changeable keys the command line set; refuse any other change."""
    saved = saved_config(run_dir)
    changed = []
    merged = OmegaConf.create(OmegaConf.to_container(saved, resolve=True))
    for key in override_keys(overrides):
        if key == "experiment":
            changed.append("+experiment (a preset cannot change a run that exists)")
            continue
        given_value = OmegaConf.select(given, key, default=None)
        saved_value = OmegaConf.select(saved, key, default=None)
        if isinstance(given_value, DictConfig):  # a group: compare the whole option
            given_plain = OmegaConf.to_container(given_value, resolve=True)
            saved_plain = OmegaConf.to_container(saved_value, resolve=True) if saved_value else None
            if given_plain == saved_plain:
                continue
            given_value = given_plain.get("name", given_plain)
            saved_value = (saved_plain or {}).get("name", saved_plain)
        elif given_value == saved_value:
            continue
        if key in CHANGEABLE_ON_RESUME:
            OmegaConf.update(merged, key, given_value)
            continue
        changed.append(f"{key} (run has {saved_value}, given {given_value})")
    if changed:
        raise UserError(
            f"resume={run_dir} continues the run with its own config, but the command line "
            f"changes {'; '.join(changed)}: drop those overrides, or start a new run (a resume "
            f"may change only {', '.join(CHANGEABLE_ON_RESUME)})"
        )
    merged.resume = None
    return merged


ATTEMPT_FILES = ("metrics.json", "provenance.json", "git_diff.patch", CHECKPOINT_NAME)


def clear_attempt(run_dir: Path) -> None:
    """Remove a failed attempt's results before running it again (its log stays)."""
    leftovers = [*run_dir.glob("events.out.tfevents.*"), *run_dir.glob(".*.tmp")]
    for path in [*leftovers, *(run_dir / name for name in ATTEMPT_FILES)]:
        path.unlink(missing_ok=True)


LOG_NAME = "trainlab.log"  # hydra.job.name's log, which Hydra opens before trainlab runs


def _check_new_folder(run_dir: Path, multirun: bool) -> None:
    """A new run goes into an empty folder of its own: never inside another run, never into
    a folder that holds other files (the current folder, a sweep, a data folder)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    for parent in run_dir.absolute().parents:
        if (parent / "metrics.json").exists() or (parent / ".hydra" / "config.yaml").exists():
            raise UserError(
                f"{run_dir} lies inside the run folder {parent}; set {key} to a folder of its own"
            )
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} - {LOG_NAME}:
        raise UserError(f"{run_dir} already holds other files; set {key} to a new or empty folder")


def plan_run(
    config: DictConfig, run_dir: Path, overrides: list[str], multirun: bool
) -> tuple[str, DictConfig]:
    """What running ``config`` into ``run_dir`` does: new, done, resume or rerun (the caller
    clears a failed attempt first).

    Never touches a finished run: a single run refuses a folder that holds one, and a sweep
    member that finished is skipped.
    """
    if config.get("resume") is not None:
        if multirun:
            raise UserError(
                "resume= takes one run folder; to resume a sweep, run the same sweep command "
                "again with hydra.sweep.dir=<its folder>"
            )
        if run_dir.absolute() != Path(config.resume).absolute():
            raise UserError(
                f"resume={config.resume} continues the run in its own folder; drop "
                f"hydra.run.dir={run_dir} from the command line"
            )
        if run_state(run_dir) != "busy":
            return "resume", config_for_resume(Path(config.resume), config, overrides)
    state = run_state(run_dir)
    if state == "new":
        _check_new_folder(run_dir, multirun)
        return state, config
    if state == "busy":
        pid = (read_json(run_dir / "metrics.json") or {}).get("pid")
        raise UserError(
            f"{run_dir} is being run right now by process {pid}; wait for it, or choose another "
            "folder"
        )
    if not multirun and state != "rerun":  # redone: failed or dead before its first checkpoint
        status = (read_json(run_dir / "metrics.json") or {}).get("status", "unfinished")
        over = f", delete {run_dir / CHECKPOINT_NAME} to start it over" if state == "resume" else ""
        raise UserError(
            f"{run_dir} already holds a run ({status}); continue it with resume={run_dir}"
            f"{over}, or choose another hydra.run.dir"
        )
    if (run_dir / ".hydra" / "config.yaml").exists():
        saved = saved_config(run_dir)
        if config_hash(saved) != config_hash(config):
            plain = [OmegaConf.to_container(c, resolve=True) for c in (saved, config)]
            changed = differences(*plain, ignore=RUNTIME_ONLY)
            raise UserError(
                f"{run_dir} holds a run of another config ({'; '.join(changed[:3])}); "
                f"{'sweep into a new hydra.sweep.dir' if multirun else 'choose another hydra.run.dir'}"
            )
    return state, config
