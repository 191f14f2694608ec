"""The terminal a run, a sweep table or a report prints to (rich; no torch)."""

from __future__ import annotations

import os

from rich.console import Console


def make_console(quiet: bool = False) -> Console:
    """A rich console; when output goes to a file or pipe, 120 columns (or $COLUMNS) rather
    than rich's 80, so tables of sweep members stay readable in logs. ``quiet``: one that
    prints nowhere (a data-parallel run's other processes)."""
    if quiet:
        return Console(file=open(os.devnull, "w"))  # lives as long as the run
    console = Console()
    if console.is_terminal:
        return console
    return Console(width=int(os.environ.get("COLUMNS", "120")))
