"""Stopping a run cleanly: the first Ctrl-C or SIGTERM finishes the step and checkpoints.

A second signal stops at once. Under submitit (SLURM), its preemption signal (SIGUSR2) also
checkpoints first, then hands over to submitit's own handler, which requeues the job; the
requeued job finds the checkpoint and resumes.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

HANDLED = ("SIGINT", "SIGTERM")
REQUEUE_SIGNAL = "SIGUSR2"  # what submitit asks SLURM to send before a preemption or time-out


class GracefulStop:
    """A context in which signals request a stop; call the object to ask whether one came."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.received is not None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        names = list(HANDLED)
        requeue = getattr(signal, REQUEUE_SIGNAL, None)
        if requeue is not None and callable(signal.getsignal(requeue)):
            names.append(REQUEUE_SIGNAL)  # submitit installed a handler: checkpoint first
        for name in names:
            number = getattr(signal, name)
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.received = number

    @property
    def requeue_requested(self) -> bool:
        """The stop came from submitit's preemption signal: the job is to be requeued."""
        requeue = getattr(signal, REQUEUE_SIGNAL, None)
        previous = self._previous.get(requeue) if requeue is not None else None
        return self.received is not None and self.received == requeue and callable(previous)

    def hand_over(self) -> None:
        """After the checkpoint: let submitit's handler requeue the job (it then exits; in a
        job of several tasks only task 0 requeues, the others' handler returns)."""
        if self.requeue_requested:
            requeue = getattr(signal, REQUEUE_SIGNAL)
            self._previous[requeue](self.received, None)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""
