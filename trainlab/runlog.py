"""The run folder's log file (``trainlab.log``), held back until the run starts.

Hydra opens the job's log handler before trainlab has checked anything; this handler (named in
``conf/hydra/job_logging/trainlab.yaml``) keeps the records in memory until the run folder says
the run has started, so a refused command writes no log into a folder (a finished run's
included). A log that cannot be written (a full disk) stops quietly: the error is said once, by
the run, not as one "--- Logging error ---" block per record.
"""

from __future__ import annotations

import contextlib
import logging


class RunLogHandler(logging.FileHandler):
    """A FileHandler that holds its records until :func:`release`, and stops on a write error."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)  # no file until a record lands
        self.held: list[logging.LogRecord] | None = []  # None: released, records go to the file
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        elif not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True  # the disk is full or the folder gone: the run's own error says so
        if self.stream is not None:
            with contextlib.suppress(OSError):
                self.stream.close()
            self.stream = None  # type: ignore[assignment]

    # (Not "release": logging.Handler's release() is its lock's.)
    def write_held(self) -> None:
        held, self.held = self.held or [], None
        for record in held:
            self.emit(record)

    def forget_held(self) -> None:
        if self.held is not None:  # a run that started keeps writing its log
            self.held = []


def _handlers() -> list[RunLogHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, RunLogHandler)]


def release() -> None:
    """The run has started: write what was held, then log straight to the file."""
    for handler in _handlers():
        handler.write_held()


def discard() -> None:
    """The run never started: forget what was held (the file is never created)."""
    for handler in _handlers():
        handler.forget_held()


def drop() -> None:
    """Never write this process's records to the run's log (a data-parallel run's other
    processes: process 0 writes it)."""
    for handler in _handlers():
        logging.getLogger().removeHandler(handler)
        handler.close()
