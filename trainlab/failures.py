"""What ends a run early, and what follows: the status its folder records, the line on stderr,
the exit code. One pure function, :func:`decide`, in the spirit of lightning-hydra-template's
``task_wrapper``: the run path only raises, the run folder records what this says, and the
command line says it and exits with it.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Literal

from trainlab.errors import SharedError, as_user_error, first_line

EXIT_FAILED = 1  # a bug, another process lost, a sweep member that failed
EXIT_USER_ERROR = 2  # a mistake in the command line, config or data: nothing ran
EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C

# mistake: the user can fix it (this process's own); peer_mistake: another process's, agreed on
# by all; interrupt: a second Ctrl-C or SIGTERM; lost_peer: another process went away; bug: the rest.
Kind = Literal["mistake", "peer_mistake", "interrupt", "lost_peer", "bug"]
# How far the run got: its folder untouched yet, running (files written), or results written.
Stage = Literal["claimed", "started", "ended"]
# What the run folder does: leave it (removing a folder made for the run), record failed or
# interrupted, put a finished run back (an extension), or nothing at all (not ours to write).
Record = Literal["abandon", "failed", "interrupted", "undo", "nothing"]


@dataclass(frozen=True)
class Failure:
    """An error that ended a run, and where the run was when it did."""

    kind: Kind
    text: str  # one line: the mistake's message, or "KeyError: 'x'" for a bug
    stage: Stage = "claimed"
    planned: bool = False  # the folder's action was decided (before: a refusal to use it)
    extends: bool = False  # the run continued a finished one for more epochs
    run_dir: str = ""
    multirun: bool = False
    rank: int = 0
    world: int = 1
    agreed: bool = False  # it came through an agreement: every process knows of it
    checkpoint: bool = False  # the folder holds a checkpoint to continue from


@dataclass(frozen=True)
class Outcome:
    record: Record
    message: str  # what metrics.json records as the error
    line: str | None  # said on stderr (None: someone else says it, or the traceback does)
    exit_code: int | None  # None: the task returns, and the sweep goes on
    traceback: bool = False  # re-raise, so that the error shows where it happened


def classify(error: BaseException, lost_peer: bool = False) -> tuple[Kind, str]:
    """The kind of ``error`` and its one-line text."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupt", "stopped by Ctrl-C or SIGTERM"
    if isinstance(error, SharedError):
        return "peer_mistake", str(error)
    mistake = as_user_error(error)
    if mistake is not None:
        return "mistake", str(mistake)
    if lost_peer:
        return "lost_peer", "another process of this run ended first"
    first = first_line(error)
    return "bug", f"{type(error).__name__}: {first}" if first else type(error).__name__


def decide(failure: Failure) -> Outcome:
    """The status to record, the line to say and the exit code for ``failure``."""
    record = _record(failure)
    message = _message(failure, record)
    line = _line(failure, record, message)
    exit_code, show_traceback = _exit(failure)
    return Outcome(record, message, line, exit_code, show_traceback)


def _record(f: Failure) -> Record:
    if f.rank != 0 or f.stage == "ended":
        return "nothing"  # process 0 writes the folder; results already written stay
    if f.stage == "started":
        return "undo" if f.extends else ("interrupted" if f.kind == "interrupt" else "failed")
    # Nothing written yet. A sweep member records its failure (its table reads it), unless the
    # folder was refused (another process's, or of unknown state): then it is not ours.
    if f.multirun and f.planned and not f.extends and f.kind != "interrupt":
        return "failed"
    return "abandon"


def _message(f: Failure, record: Record) -> str:
    if record == "interrupted":
        if f.checkpoint:
            return (
                "stopped at once by a second Ctrl-C or SIGTERM; a resume continues from the last "
                "checkpoint"
            )
        return "stopped by Ctrl-C or SIGTERM before its first checkpoint"
    return f.text


def _line(f: Failure, record: Record, message: str) -> str | None:
    where = f"(process {f.rank})" if f.rank != 0 else ""
    if f.kind == "bug" or (f.rank != 0 and f.kind in ("peer_mistake", "interrupt")):
        return None  # a traceback says it; or process 0 does
    if f.kind == "lost_peer":
        return (
            f"trainlab: error{' ' + where if where else ''}: another process of this run ended "
            f"first, so this one stopped too ({f.run_dir}; its error is in that process's output)"
        )
    if f.kind == "interrupt":
        if f.stage == "ended":
            return "trainlab: interrupted; the results were written already"
        return {
            "interrupted": f"trainlab: interrupted; {f.run_dir} is marked interrupted",
            "undo": f"trainlab: interrupted; {_undone(f)}",
        }.get(record, "trainlab: interrupted before the run started; nothing was written")
    after = {
        "undo": f"; {_undone(f)}",
        "abandon": f"; the finished run in {f.run_dir} is unchanged" if f.extends else "",
    }.get(record, "")
    return f"trainlab: error{' ' + where if where else ''}: {message}{after}"


def _undone(f: Failure) -> str:
    return f"the extension was undone: {f.run_dir} holds the finished run as it was"


def _exit(f: Failure) -> tuple[int | None, bool]:
    if f.kind == "interrupt":
        return EXIT_INTERRUPTED, False  # a sweep stops here too
    if f.kind == "lost_peer":
        return EXIT_FAILED, False
    # A process failing alone, not through an agreement, must exit non-zero in a sweep too:
    # Hydra would keep its error as the job's result and leave the other processes waiting.
    alone = f.world > 1 and f.rank != 0 and not f.agreed
    if f.kind == "bug":
        if not f.multirun:
            return None, True  # Hydra shows the traceback and exits 1
        return (EXIT_FAILED if f.world > 1 and not f.agreed else None), False
    if f.multirun:
        return (EXIT_USER_ERROR if alone and f.kind == "mistake" else None), False
    return EXIT_USER_ERROR, False


def describe_bug(error: BaseException) -> str:
    """A bug's traceback, for a sweep member's log (the sweep goes on)."""
    return "".join(traceback.format_exception(error))
