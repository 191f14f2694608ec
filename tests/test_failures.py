"""The failure policy as a table: which error, where the run was, alone or among processes ->
what the folder records, what is said, and the exit code."""

from __future__ import annotations

import pytest

from trainlab.errors import SharedError, UserError
from trainlab.failures import Failure, classify, decide

DIR = "outputs/runs/r"
UNDONE = f"the extension was undone: {DIR} holds the finished run as it was"


def failure(kind="mistake", text="dataset=mnist: files missing", **where) -> Failure:
    return Failure(kind=kind, text=text, run_dir=DIR, **where)


# (failure, record, line on stderr, exit code; None: the task returns and a sweep goes on)
CASES = [
    # A single run: a mistake before anything was written leaves nothing (no folder, or the
    # folder as it was); after, the run is marked failed; an extension is undone.
    (failure(), "abandon", "trainlab: error: dataset=mnist: files missing", 2),
    (
        failure(stage="started", planned=True),
        "failed",
        "trainlab: error: dataset=mnist: files missing",
        2,
    ),
    (
        failure(stage="started", planned=True, extends=True),
        "undo",
        f"trainlab: error: dataset=mnist: files missing; {UNDONE}",
        2,
    ),
    (
        failure(planned=True, extends=True),
        "abandon",
        f"trainlab: error: dataset=mnist: files missing; the finished run in {DIR} is unchanged",
        2,
    ),
    # A sweep member records its failure (its table reads metrics.json) and the sweep goes on,
    # unless the folder was refused before it was planned: then it is not the member's.
    (
        failure(multirun=True, planned=True),
        "failed",
        "trainlab: error: dataset=mnist: files missing",
        None,
    ),
    (
        failure(multirun=True, text="D is in use by another trainlab process"),
        "abandon",
        "trainlab: error: D is in use by another trainlab process",
        None,
    ),
    (
        failure(multirun=True, stage="started", planned=True),
        "failed",
        "trainlab: error: dataset=mnist: files missing",
        None,
    ),
    # A bug: its traceback in a single run; in a sweep the member fails and the others go on.
    (failure("bug", "KeyError: 'x'", stage="started", planned=True), "failed", None, None),
    (
        failure("bug", "KeyError: 'x'", multirun=True, stage="started", planned=True),
        "failed",
        None,
        None,
    ),
    # Ctrl-C twice or SIGTERM outside a step: interrupted (the sweep stops too).
    (
        failure("interrupt", "stopped"),
        "abandon",
        "trainlab: interrupted before the run started; nothing was written",
        130,
    ),
    (
        failure("interrupt", "stopped", stage="started", planned=True),
        "interrupted",
        f"trainlab: interrupted; {DIR} is marked interrupted",
        130,
    ),
    (
        failure("interrupt", "stopped", stage="started", planned=True, extends=True),
        "undo",
        f"trainlab: interrupted; {UNDONE}",
        130,
    ),
    (
        failure("interrupt", "stopped", multirun=True, stage="started", planned=True),
        "interrupted",
        f"trainlab: interrupted; {DIR} is marked interrupted",
        130,
    ),
    # Results written: a late Ctrl-C changes nothing recorded.
    (
        failure("interrupt", "stopped", stage="ended", planned=True),
        "nothing",
        "trainlab: interrupted; the results were written already",
        130,
    ),
]
# Data-parallel: process 0 records and says it; another process says only its own failures.
PARALLEL = [
    (
        failure(rank=0, world=2, agreed=True, text="process 1: no data on this node"),
        "abandon",
        "trainlab: error: process 1: no data on this node",
        2,
    ),
    (failure("peer_mistake", rank=1, world=2, agreed=True), "nothing", None, 2),
    (failure("peer_mistake", rank=1, world=2, agreed=True, multirun=True), "nothing", None, None),
    # Its own mistake after the agreements: said here, and a non-zero exit so srun or torchrun
    # ends the others instead of leaving them waiting (in a sweep too).
    (
        failure(rank=1, world=2, multirun=True),
        "nothing",
        "trainlab: error (process 1): dataset=mnist: files missing",
        2,
    ),
    (
        failure("bug", "KeyError: 'y'", rank=1, world=2, multirun=True, stage="started"),
        "nothing",
        None,
        1,
    ),
    (
        failure("bug", "KeyError: 'y'", rank=1, world=2, multirun=True, agreed=True),
        "nothing",
        None,
        None,
    ),
    (
        failure(
            "lost_peer", "another process of this run ended first", rank=1, world=2, stage="started"
        ),
        "nothing",
        f"trainlab: error (process 1): another process of this run ended first, so this one stopped too ({DIR}; its error is in that process's output)",
        1,
    ),
    (
        failure(
            "lost_peer",
            "another process of this run ended first",
            rank=0,
            world=2,
            stage="started",
            planned=True,
        ),
        "failed",
        f"trainlab: error: another process of this run ended first, so this one stopped too ({DIR}; its error is in that process's output)",
        1,
    ),
]


@pytest.mark.parametrize(("failure", "record", "line", "exit_code"), CASES + PARALLEL)
def test_the_failure_policy(failure, record, line, exit_code):
    outcome = decide(failure)
    assert (outcome.record, outcome.line, outcome.exit_code) == (record, line, exit_code)


def test_a_bug_in_a_single_run_keeps_its_traceback_and_a_mistake_never_does():
    assert decide(failure("bug", "KeyError: 'x'")).traceback
    assert not decide(failure("bug", "KeyError: 'x'", multirun=True)).traceback
    assert not decide(failure()).traceback


def test_an_interrupted_record_says_how_far_a_resume_goes():
    with_checkpoint = decide(failure("interrupt", "x", stage="started", checkpoint=True))
    assert "a resume continues from the last checkpoint" in with_checkpoint.message
    without = decide(failure("interrupt", "x", stage="started"))
    assert without.message == "stopped by Ctrl-C or SIGTERM before its first checkpoint"


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (UserError("loss=hubr: no such option"), "mistake", "loss=hubr: no such option"),
        (SharedError("no data"), "peer_mistake", "no data"),
        (KeyboardInterrupt(), "interrupt", "stopped by Ctrl-C or SIGTERM"),
        (KeyError("x"), "bug", "KeyError: 'x'"),
        (
            OSError(36, "File name too long", "/a/b"),
            "mistake",
            "/a/b: File name too long; use a shorter path",
        ),
        (
            OSError(28, "No space left on device", "/a/c"),
            "mistake",
            "/a/c: No space left on device; free some disk space, or choose a path on another disk",
        ),
    ],
)
def test_errors_are_classified(error, kind, text):
    assert classify(error) == (kind, text)
