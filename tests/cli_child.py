"""The child side of tests.helpers' CLI runner: a process forked from a server that has already
imported torch, Hydra and trainlab, which runs the real ``trainlab`` entry point (``main()``)
with its own argv, working folder, environment and output files, and exits with its code.

A plain subprocess pays 5-7 s of imports per command; a child of the server pays none, so the
tests can run many real command lines. The kill driver's patches (tests/kill_driver.py) are
installed in the child when asked for.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

import tensorboard.backend.event_processing.event_accumulator  # noqa: F401  (once, here)
import torch
import torch._dynamo
import torch.distributed
import torch.utils.tensorboard
import torchvision  # noqa: F401
from hydra.core.plugins import Plugins

import trainlab.cli
import trainlab.train
from tests import kill_driver

Plugins.instance()  # Hydra's scan of its plugins (the sweep extra's): once, for every child


def run(
    argv: list[str],
    cwd: str,
    environ: Mapping[str, str],
    stdout: str,
    stderr: str,
    driver: Mapping[str, object] | None,
) -> None:
    """Run ``trainlab ARGV`` in this (forked) process; never returns."""
    for number, path in ((1, stdout), (2, stderr)):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(descriptor, number)
        os.close(descriptor)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if driver:
        kill_driver.install(**driver)
    sys.argv = ["trainlab", *argv]
    code = 0
    try:
        trainlab.cli.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # what would end a real process with a traceback
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


del torch
