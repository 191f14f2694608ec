"""The run folder: the one module that reads or changes a run's state on disk.

A run folder holds ``.hydra/`` (what it runs), ``metrics.json`` (its status, and its results
once it has them), ``provenance.json``, ``checkpoint.pt``, TensorBoard event files and
``trainlab.log``. Its life, and the rules it keeps:

- **Claimed** with an ``flock`` on ``.trainlab.lock``, held as long as the process lives: a
  second process (the same command, ``resume=``, an identical sweep) is refused at once.
- **Planned** from what the folder holds (:func:`look`, :func:`action_for`): new, done, resume or
  rerun. A ``metrics.json`` that cannot be read is refused, never taken for "new": nothing is
  deleted on a guess, and the only files ever deleted are a known attempt's own.
- **Started** by its first write, once everything is built and loaded: ``metrics.json``
  (running), ``.hydra/`` and ``provenance.json``. A failure before that leaves no folder, or
  the folder as it was.
- **Ended** as completed, early_stopped or diverged (results written), interrupted or failed.
- A finished run changes only through a successful extension (``resume=DIR epochs=N``): the
  finished files are kept aside (hard links) while it runs, and put back when it fails, is
  stopped or is killed (then by the next command that claims the folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from trainlab import provenance, runlog
from trainlab.checkpoint import CHECKPOINT_NAME, save_checkpoint
from trainlab.config_keys import RUNTIME_ONLY, differences, flatten, override_key, shell_override
from trainlab.errors import UserError, first_line
from trainlab.failures import Failure, Outcome, classify
from trainlab.failures import decide as decide_outcome
from trainlab.files import FolderLocked, OutputError, atomic_write, lock_folder, write_json

if TYPE_CHECKING:
    from trainlab.distributed import Team
    from trainlab.job import Job

log = logging.getLogger("trainlab")

LOCK_NAME = ".trainlab.lock"
UNDO_NAME = ".trainlab-undo"  # the finished run's files, kept while an extension runs
LOG_NAME = "trainlab.log"  # hydra.job.name's log (see trainlab.runlog)
METRICS_NAME = "metrics.json"
PROVENANCE_NAME = "provenance.json"
DIFF_NAME = "git_diff.patch"
PROBE_PLOT_NAME = "lr_find.png"  # a learning-rate probe's curve (mode=lr_find)
FINISHED = ("completed", "early_stopped", "diverged")
STATUSES = (*FINISHED, "running", "interrupted", "failed")
Action = Literal["new", "done", "resume", "rerun"]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class FolderBusy(UserError):
    """Another process holds the run folder."""


# ---- what a folder holds, read without changing it ------------------------------------------


@dataclass(frozen=True)
class Found:
    """A run folder's contents as far as its state goes."""

    metrics: dict[str, Any] | None  # metrics.json; None when there is none
    problem: str | None  # why metrics.json cannot be trusted (unreadable, unknown status)
    checkpoint: bool
    config: bool  # .hydra/config.yaml
    others: tuple[str, ...] = ()  # entries that are not a run's
    results: bool = False  # event files or provenance.json: more than a start left behind

    @property
    def status(self) -> str | None:
        return None if self.metrics is None else self.metrics.get("status")

    @property
    def resumable(self) -> bool:
        """Stopped or failed after a checkpoint: resuming continues it."""
        stopped = self.status in ("running", "interrupted") or bool(
            (self.metrics or {}).get("resumable")
        )
        return self.checkpoint and stopped


def _is_run_file(name: str) -> bool:
    return (
        name in (METRICS_NAME, PROVENANCE_NAME, DIFF_NAME, CHECKPOINT_NAME, ".hydra", LOG_NAME)
        or name == PROBE_PLOT_NAME
        or name in (LOCK_NAME, UNDO_NAME)
        or name.startswith("events.out.tfevents.")
        or (name.startswith(".") and name.endswith(".tmp"))
    )


def _read_metrics(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not (path.exists() or path.is_symlink()):
        return None, None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        return None, f"{path} cannot be read ({reason})"
    if not isinstance(value, dict) or value.get("status") not in STATUSES:
        return None, f"{path} does not hold a trainlab status"
    return value, None


def look(run_dir: Path) -> Found:
    """What ``run_dir`` holds (an absent folder holds nothing)."""
    metrics, problem = _read_metrics(run_dir / METRICS_NAME)
    names = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else []
    return Found(
        metrics=metrics,
        problem=problem,
        checkpoint=(run_dir / CHECKPOINT_NAME).exists(),
        config=(run_dir / ".hydra" / "config.yaml").exists(),
        others=tuple(sorted(name for name in names if not _is_run_file(name))),
        results=any(n.startswith("events.out.tfevents.") or n == PROVENANCE_NAME for n in names),
    )


def action_for(found: Found, run_dir: Path, *, resume: bool, multirun: bool) -> Action:
    """What running into a folder holding ``found`` does, or a UserError saying why not.

    An explicit ``resume=`` continues any run that has a checkpoint (a finished one, for more
    epochs); otherwise a finished sweep member is skipped, a stopped one resumed and a failed
    one (or one killed before its first checkpoint) rerun; a single run refuses a folder that
    holds a run it could continue, and says how.
    """
    if found.problem is not None:
        raise UserError(
            f"{found.problem}: trainlab cannot tell whether the run in {run_dir} finished, so it "
            "changes nothing there; restore the file, or move the folder away to run it anew"
        )
    if resume:
        if (found.metrics or {}).get("kind") == "lr_find":
            raise UserError(
                f"{run_dir} holds a learning-rate probe (mode=lr_find), which has nothing to "
                "continue; run it again, or train with the command in its metrics.json"
            )
        if not found.checkpoint:
            raise UserError(_no_checkpoint(found, run_dir))
        return "resume"
    if found.metrics is None:
        return _decide_without_metrics(found, run_dir, multirun)
    if found.status in FINISHED and multirun:
        return "done"
    if found.metrics.get("kind") == "lr_find" and found.status in FINISHED:
        raise UserError(
            f"{run_dir} already holds a learning-rate probe ({found.status}); choose another "
            "hydra.run.dir"
        )
    if found.status in FINISHED or (found.resumable and not multirun):
        over = f", delete {run_dir / CHECKPOINT_NAME} to start it over" if found.resumable else ""
        raise UserError(
            f"{run_dir} already holds a run ({found.status}); continue it with "
            f"{shell_override('resume', run_dir)}{over}, or choose another hydra.run.dir"
        )
    return "resume" if found.resumable else "rerun"


def _no_checkpoint(found: Found, run_dir: Path) -> str:
    steps = (found.metrics or {}).get("steps")
    if steps:  # it got far enough to write one: the file was moved or deleted
        return (
            f"no checkpoint at {run_dir / CHECKPOINT_NAME}, though the run got to step {steps} "
            "(the file was moved or deleted?); put it back to resume the run, or start anew "
            "in another folder"
        )
    return (
        f"no checkpoint at {run_dir / CHECKPOINT_NAME}: the run stopped before its first "
        f"checkpoint; run the same command again (with hydra.run.dir={run_dir}) to start it over"
    )


def _decide_without_metrics(found: Found, run_dir: Path, multirun: bool) -> Action:
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if found.checkpoint:  # metrics.json deleted: finished or not, nobody can tell
        raise UserError(
            f"{run_dir} holds a checkpoint but no {METRICS_NAME}, so whether its run finished "
            f"is unknown; continue it with {shell_override('resume', run_dir)}, or set {key} to "
            "another folder"
        )
    if found.config and not found.results:  # killed as it started: nothing to keep
        return "rerun"
    if found.config:  # results but no status (metrics.json deleted): nobody can tell
        raise UserError(
            f"{run_dir} holds a run's results but no {METRICS_NAME}, so whether it finished is "
            f"unknown; restore the file, or set {key} to another folder"
        )
    if found.others:
        raise UserError(f"{run_dir} already holds other files; set {key} to a new or empty folder")
    return "new"


def _inside_a_run(run_dir: Path) -> Path | None:
    for parent in run_dir.absolute().parents:
        if (parent / METRICS_NAME).exists() or (parent / ".hydra" / "config.yaml").exists():
            return parent
    return None


def saved_config(run_dir: Path) -> DictConfig:
    """The config a run folder was started with (``.hydra/config.yaml``)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"resume={run_dir} is a file, not a run folder; give the folder of a run")
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


def saved_overrides(run_dir: Path) -> list[str] | None:
    """The command-line overrides a run was started with (None when not recorded)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        overrides = OmegaConf.load(path)
    except Exception as error:
        raise UserError(f"{path} is unreadable ({first_line(error)}); {_REWRITE_HINT}") from None
    if not isinstance(overrides, ListConfig) or not all(isinstance(o, str) for o in overrides):
        raise UserError(f"{path} is not a list of overrides; {_REWRITE_HINT}")
    return list(overrides)


_REWRITE_HINT = (
    "trainlab reads the run's command line from it: restore it, or write it as a YAML list of "
    "the run's overrides (as Hydra did: - key=value)"
)


def check_same_config(
    run_dir: Path, config: DictConfig, multirun: bool, overrides: Sequence[str] = ()
) -> None:
    """A run is rerun only with the config it was started with (runtime-only keys aside).
    Settings that trainlab gained since the run was made, and the command line does not
    set, hold their defaults: they are no change."""
    if not (run_dir / ".hydra" / "config.yaml").exists():
        return
    saved = saved_config(run_dir)
    if provenance.config_hash(saved) == provenance.config_hash(config):
        return
    plain = [OmegaConf.to_container(c, resolve=True) for c in (saved, config)]
    given = {override_key(o).replace("/", ".") for o in overrides}
    newer = [
        key
        for key in flatten(plain[1]).keys() - flatten(plain[0]).keys()
        if not any(key == name or key.startswith(f"{name}.") for name in given)
    ]
    changed = differences(*plain, ignore=[*RUNTIME_ONLY, *newer])
    if not changed:
        return
    where = "sweep into a new hydra.sweep.dir" if multirun else "choose another hydra.run.dir"
    raise UserError(f"{run_dir} holds a run of another config ({'; '.join(changed[:3])}); {where}")


def check_new_folder(run_dir: Path, multirun: bool) -> None:
    """A new run never goes inside another run's folder."""
    outer = _inside_a_run(run_dir)
    if outer is not None:
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        raise UserError(
            f"{run_dir} lies inside the run folder {outer}; set {key} to a folder of its own"
        )


def check_resume_target(config: DictConfig, run_dir: Path, multirun: bool) -> None:
    """``resume=DIR`` continues one run, in its own folder."""
    resume = config.get("resume")
    if resume is None:
        return
    if multirun:
        raise UserError(
            "resume= takes one run folder; to resume a sweep, run the same sweep command "
            "again with hydra.sweep.dir=<its folder>"
        )
    if run_dir.absolute() != Path(resume).absolute():
        raise UserError(
            f"resume={resume} continues the run in its own folder; drop "
            f"hydra.run.dir={run_dir} from the command line"
        )


def preview(config: DictConfig, run_dir: Path, overrides: list[str]) -> Action:
    """What a sweep member will do in its folder, decided without claiming it (the member
    decides again, under its lock, when it runs)."""
    check_resume_target(config, run_dir, multirun=True)
    lock = run_dir / LOCK_NAME
    if lock.exists():
        os.close(_lock(lock))  # refused at once when another process holds it
    action = action_for(look(run_dir), run_dir, resume=False, multirun=True)
    if action == "rerun":
        check_same_config(run_dir, config, multirun=True, overrides=overrides)
    elif action == "new":
        check_new_folder(run_dir, multirun=True)
    return action


# ---- the plan a claimed folder gives -------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What this run does in its folder; plain data, so every process can be given it."""

    action: Action
    config: dict[str, Any]  # the config to run (a resume's: the saved one, epochs maybe extended)
    previous: dict[str, Any] = field(default_factory=dict)  # metrics.json as found
    overrides: list[str] = field(default_factory=list)  # those the run was started with
    extends: bool = False  # continues a finished run for more epochs

    @property
    def done(self) -> bool:
        return self.action == "done"

    @property
    def resuming(self) -> bool:
        return self.action == "resume"


# ---- the lock ---------------------------------------------------------------------------------


def _lock(path: Path) -> int:
    """The run folder's lock, or FolderBusy naming the folder."""
    try:
        return lock_folder(path)
    except FolderLocked:
        raise FolderBusy(
            f"{path.parent} is in use by another trainlab process right now (it holds "
            f"{path.name}); wait for it to end, or choose another folder"
        ) from None


# ---- the run folder ---------------------------------------------------------------------------


class RunFolder:
    """A run folder this process has claimed; every change to its state goes through here."""

    def __init__(self, path: Path, lock: int, made: bool) -> None:
        self.path = path
        self._lock = lock
        self._made = made  # nothing was there: a run that never starts leaves no folder
        self.plan_: Plan | None = None
        self.stage: Literal["claimed", "started", "ended"] = "claimed"
        self.started_at = now()
        self._provenance: dict[str, Any] = {}
        self._previous_provenance: dict[str, Any] = {}
        self._config_changed = False

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_NAME

    @classmethod
    def claim(cls, path: Path) -> RunFolder:
        """Lock ``path`` for this process's life (making the folder when there is none)."""
        if path.exists() and not path.is_dir():
            raise UserError(f"{path} is a file, not a folder; choose another folder for the run")
        made = not path.exists() or not any(
            p.name not in (LOG_NAME, LOCK_NAME) for p in path.iterdir()
        )
        try:
            path.mkdir(parents=True, exist_ok=True)
            return cls(path, _lock(path / LOCK_NAME), made)
        except OSError as error:
            raise OutputError(
                f"cannot use {path} as a run folder: {error.strerror or error}; choose a "
                "writable folder (hydra.run.dir / hydra.sweep.dir)"
            ) from None
        except OutputError:  # a file system without locks: a folder made for the run goes again
            if made:
                _remove_if_empty(path)
            raise

    def plan(self, config: DictConfig, overrides: list[str], multirun: bool) -> Plan:
        """Decide new / done / resume / rerun, and the config to run (see :func:`action_for`)."""
        from trainlab.resume import config_for_resume  # what may change on resume: its rule

        check_resume_target(config, self.path, multirun)
        _settle_cut_short_extension(self.path)
        saved = saved_config(self.path) if config.get("resume") is not None else None
        found = look(self.path)
        action = action_for(found, self.path, resume=saved is not None, multirun=multirun)
        previous = found.metrics or {}
        started_with = saved_overrides(self.path) if action in ("resume", "done") else None
        if saved is not None:
            config = config_for_resume(saved, config, overrides, self.path)
            self._config_changed = bool(differences(*_plain(saved, config)))
        elif action == "rerun":
            check_same_config(self.path, config, multirun, overrides)
        elif action == "new":
            check_new_folder(self.path, multirun)
        self.plan_ = Plan(
            action=action,
            # Unresolved: each process resolves ${oc.env:...} on its own node.
            config=OmegaConf.to_container(config),
            previous=previous,
            overrides=list(overrides if started_with is None else started_with),
            extends=action == "resume" and found.status in FINISHED,
        )
        return self.plan_

    # -- the first write --

    def start(self, config: DictConfig, job: Job, from_step: int) -> None:
        """The run's first write, once everything it needs is built and loaded: clear a failed
        attempt (or keep a finished run aside, for an extension), then mark the run running and
        write its config and provenance. All or nothing: a failure here (a full disk) takes back
        what it wrote, so the folder is as it was."""
        plan = self.plan_
        assert plan is not None, "plan() comes first"
        self.stage = "started"
        try:
            self._write_start(config, job, plan, from_step)
        except BaseException:
            self._take_back_start(plan)
            self.stage = "claimed"
            raise
        runlog.release()  # the log is written from now on, held records first

    def _write_start(self, config: DictConfig, job: Job, plan: Plan, from_step: int) -> None:
        if plan.extends:
            _keep_for_undo(self.path)
        if plan.action == "rerun":
            _clear_attempt(self.path)
        for leftover in self.path.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)  # a write a kill cut short
        self.started_at = plan.previous.get("started_at", self.started_at)
        running = {"status": "running", "started_at": self.started_at}
        write_json(self.metrics_path, {**running, "host": socket.gethostname(), "pid": os.getpid()})
        for name, content in self._config_files(config, job, plan).items():
            text = OmegaConf.to_yaml(content)
            atomic_write(self.path / ".hydra" / name, lambda f, text=text: f.write(text.encode()))
        self._provenance = self._record_provenance(config, job.command, plan, from_step)

    def _config_files(self, config: DictConfig, job: Job, plan: Plan) -> dict[str, Any]:
        """Hydra's .hydra/ record: a new run's, or a resumed one's config when it changed."""
        if plan.resuming:
            return {"config.yaml": config} if self._config_changed else {}
        return {
            "config.yaml": config,
            "hydra.yaml": OmegaConf.create({"hydra": job.hydra_config}),
            "overrides.yaml": OmegaConf.create(list(job.overrides)),
        }

    def _take_back_start(self, plan: Plan) -> None:
        """Undo a start that failed halfway (best effort: the disk may still be full)."""
        with contextlib.suppress(OSError, UserError):
            if plan.extends:
                _undo_extension(self.path)
            elif plan.resuming:
                write_json(self.metrics_path, plan.previous)
                if self._previous_provenance:
                    write_json(self.path / PROVENANCE_NAME, self._previous_provenance)
            else:
                for name in (*ATTEMPT_FILES, *(f".hydra/{n}" for n in HYDRA_FILES)):
                    (self.path / name).unlink(missing_ok=True)
                (self.path / ".hydra").rmdir()

    def _record_provenance(
        self, config: DictConfig, command: list[str], plan: Plan, from_step: int
    ) -> dict[str, Any]:
        if plan.resuming:
            recorded = self._previous_provenance = _read_json(self.path / PROVENANCE_NAME)
            written = provenance.with_resume(recorded, config, command, now(), from_step)
        else:
            written, diff = provenance.describe(config, command, self.started_at)
            if diff:
                atomic_write(self.path / DIFF_NAME, lambda file: file.write(diff.encode()))
        write_json(self.path / PROVENANCE_NAME, written)
        return written

    @property
    def provenance(self) -> dict[str, Any]:
        return self._provenance

    def save_checkpoint(self, parts: dict[str, Any]) -> None:
        save_checkpoint(self.path / CHECKPOINT_NAME, parts)

    def write_picture(self, name: str, draw: Callable[[IO[bytes]], None]) -> None:
        """``draw(file)`` into the run's file ``name``, which appears only once whole."""
        atomic_write(self.path / name, draw)

    # -- how the run ends --

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The run's outcome in one write: its results, or (stopped by a signal after its
        checkpoint) how far it got. An extension that finishes replaces the finished run; one
        that was stopped is undone, and the finished run stays as it was."""
        self.stage = "ended"
        if metrics["status"] == "interrupted":
            return self._interrupt(metrics)
        metrics = {**metrics, "started_at": self.started_at}
        write_json(self.metrics_path, metrics)
        written = {**self._provenance, "finished_at": metrics.get("finished_at", now())}
        write_json(self.path / PROVENANCE_NAME, written)
        _forget_undo(self.path)
        return metrics

    def _interrupt(self, metrics: dict[str, Any]) -> dict[str, Any]:
        if self.plan_ is not None and self.plan_.extends:
            _undo_extension(self.path)
            return {**metrics, "message": f"{self.undone}; run the same command to extend it"}
        metrics = {**metrics, "started_at": self.started_at, "interrupted_at": now()}
        write_json(self.metrics_path, metrics)
        return metrics

    @property
    def undone(self) -> str:
        return f"the extension was undone: {self.path} holds the finished run as it was"

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT_NAME).exists()

    def record(self, status: str, message: str) -> None:
        """A run that ended with an error or a second signal: its status, its error, and (after
        a checkpoint) ``resumable``, so a resume or the sweep run again continues it."""
        previous = self.plan_.previous if self.plan_ is not None else {}
        kept = {k: v for k, v in previous.items() if k not in ("message", "pid", "host")}
        record: dict[str, Any] = {**kept, "status": status, "error": message}
        record.setdefault("started_at", self.started_at)
        if status == "failed" and self.has_checkpoint():
            record["resumable"] = True
        self.stage = "ended"
        with contextlib.suppress(OutputError):  # a full disk may refuse this too: the line says it
            write_json(self.metrics_path, record)

    def undo(self) -> None:
        """An extension that failed: put the finished run back, byte for byte."""
        self.stage = "ended"
        _undo_extension(self.path)

    def describe(self, kind_and_text: tuple[str, str], multirun: bool) -> Failure:
        """The failure as the policy sees it: how far this run got in its folder."""
        kind, text = kind_and_text
        return Failure(
            kind=kind,  # type: ignore[arg-type]
            text=text,
            stage=self.stage,
            planned=self.plan_ is not None,
            extends=self.plan_ is not None and self.plan_.extends,
            run_dir=str(self.path),
            multirun=multirun,
            checkpoint=self.has_checkpoint(),
        )

    def end(self, outcome: Outcome) -> None:
        """Record how the run ended early, as the failure policy says."""
        if outcome.record == "abandon":
            self.abandon()
        elif outcome.record == "undo":
            self.undo()
        elif outcome.record in ("failed", "interrupted"):
            self.record(outcome.record, outcome.message)

    def abandon(self) -> None:
        """The run never started: what it logged is dropped, and a folder this process made is
        removed again when the lock is released."""
        runlog.discard()

    def release(self) -> None:
        """Unlock (the lock file goes too: a finished folder holds only the run)."""
        with contextlib.suppress(OSError):
            (self.path / LOCK_NAME).unlink()
        os.close(self._lock)
        if self._made and self.stage == "claimed":
            _remove_if_empty(self.path)


def _remove_if_empty(run_dir: Path) -> None:
    """A folder made for a run that never started, and the empty date folders above it."""
    log_file = run_dir / LOG_NAME
    with contextlib.suppress(OSError):  # stops at the first folder that holds anything
        if log_file.exists() and log_file.stat().st_size == 0:
            log_file.unlink()
        for folder in (run_dir, *list(run_dir.parents)[:3]):  # time, day, runs/, outputs/
            folder.rmdir()


def _plain(*configs: DictConfig) -> list[Any]:
    return [OmegaConf.to_container(config, resolve=True) for config in configs]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


ATTEMPT_FILES = (METRICS_NAME, PROVENANCE_NAME, DIFF_NAME, CHECKPOINT_NAME, PROBE_PLOT_NAME)
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def _clear_attempt(run_dir: Path) -> None:
    """Remove a failed attempt's own files before running it again (its log stays)."""
    leftovers = [*run_dir.glob("events.out.tfevents.*"), *run_dir.glob(".*.tmp")]
    for path in [*leftovers, *(run_dir / name for name in ATTEMPT_FILES)]:
        path.unlink(missing_ok=True)


# ---- keeping a finished run while it is extended ------------------------------------------------


def _files_of(run_dir: Path) -> list[Path]:
    """Every file of the run, relative to its folder (the lock and the kept copy aside)."""
    skip = {LOCK_NAME, UNDO_NAME, f"{UNDO_NAME}.tmp"}
    return sorted(
        path.relative_to(run_dir)
        for path in run_dir.rglob("*")
        if path.is_file() and path.relative_to(run_dir).parts[0] not in skip
    )


def _keep_for_undo(run_dir: Path) -> None:
    """Hard-link every file of the finished run into ``.trainlab-undo/`` (numbered, so neither
    TensorBoard nor trainlab-report takes the copies for a run), with a manifest of their
    places. Files are only ever replaced by renames, so the links keep the old contents; the
    log, which is appended to, is copied. Complete when the folder is renamed into place."""
    staging = run_dir / f"{UNDO_NAME}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    files = [str(path) for path in _files_of(run_dir)]
    for index, name in enumerate(files):
        source, copy = run_dir / name, staging / str(index)
        if name == LOG_NAME:
            shutil.copy2(source, copy)
            continue
        try:
            os.link(source, copy)
        except OSError as error:  # a file system without hard links
            if error.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copy2(source, copy)
    metrics = (run_dir / METRICS_NAME).read_bytes()
    manifest = {"files": files, "metrics": metrics.decode(errors="replace")}
    atomic_write(staging / "manifest.json", lambda f: f.write(json.dumps(manifest).encode()))
    os.replace(staging, run_dir / UNDO_NAME)


def _undo_extension(run_dir: Path) -> None:
    """Put the kept files back and remove what the extension added; safe to repeat if cut short."""
    kept = run_dir / UNDO_NAME
    if not (kept / "manifest.json").is_file():  # failed as it was being kept: nothing changed yet
        _forget_undo(run_dir)
        return
    manifest = json.loads((kept / "manifest.json").read_text())
    files = manifest["files"]
    for index, name in enumerate(files):
        if (kept / str(index)).exists():
            (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(kept / str(index), run_dir / name)
    for path in _files_of(run_dir):
        if str(path) not in files:
            (run_dir / path).unlink()
    _forget_undo(run_dir)


def _forget_undo(run_dir: Path) -> None:
    for name in (UNDO_NAME, f"{UNDO_NAME}.tmp"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _settle_cut_short_extension(run_dir: Path) -> None:
    """An extension killed before its results: put the finished run back (one that got as far
    as writing its results only lost its clean-up)."""
    shutil.rmtree(run_dir / f"{UNDO_NAME}.tmp", ignore_errors=True)  # never begun
    kept = run_dir / UNDO_NAME
    if not kept.is_dir():
        return
    manifest = json.loads((kept / "manifest.json").read_text())
    metrics, _ = _read_metrics(run_dir / METRICS_NAME)
    current = (run_dir / METRICS_NAME).read_bytes().decode(errors="replace")
    if metrics is not None and metrics.get("status") in FINISHED and current != manifest["metrics"]:
        _forget_undo(run_dir)  # the extension finished
        return
    log.warning("an extension of %s was cut short; putting the finished run back", run_dir)
    _undo_extension(run_dir)


class Bystander:
    """The run folder as a data-parallel run's other processes see it: process 0 writes it,
    so every change here is nothing."""

    stage = "claimed"
    plan_ = None
    provenance: dict[str, Any] = {}

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, config: DictConfig, job: Job, from_step: int) -> None:
        self.stage = "started"

    def save_checkpoint(self, parts: dict[str, Any]) -> None: ...

    def write_picture(self, name: str, draw: Callable[[IO[bytes]], None]) -> None: ...

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics

    def has_checkpoint(self) -> bool:
        return False

    def describe(self, kind_and_text: tuple[str, str], multirun: bool) -> Failure:
        kind, text = kind_and_text
        return Failure(kind=kind, text=text, run_dir=str(self.path), multirun=multirun)  # type: ignore[arg-type]

    def end(self, outcome: Outcome) -> None: ...

    def release(self) -> None: ...


OUTCOME = "trainlab_outcome"  # the attribute an error carries its outcome in


def outcome_of(error: BaseException) -> Outcome | None:
    """The outcome decided for ``error`` as its run ended (None: it ended no claimed run)."""
    return getattr(error, OUTCOME, None)


@contextlib.contextmanager
def claimed(run_dir: Path, multirun: bool, team: Team) -> Iterator[RunFolder | Bystander]:
    """The run folder, locked by process 0 for the block (a stand-in on the other processes).
    Whatever ends the block early, the folder records what the failure policy decides, and the
    error carries that decision on (see :func:`outcome_of`)."""
    from trainlab.distributed import lost_a_peer, was_agreed

    folder = team.on_main(lambda: RunFolder.claim(run_dir)) or Bystander(run_dir)
    try:
        yield folder
    except BaseException as error:
        failure = folder.describe(classify(error, team.parallel and lost_a_peer(error)), multirun)
        processes = team.processes
        failure = dataclasses.replace(
            failure, rank=processes.rank, world=processes.world, agreed=was_agreed(error)
        )
        outcome = decide_outcome(failure)
        folder.end(outcome)
        setattr(error, OUTCOME, outcome)
        raise
    finally:
        folder.release()
