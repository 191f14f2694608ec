"""A run's checkpoint: everything needed to continue it exactly, in one atomic file.

Model, optimizer, lr schedule, the engine's state (early stopping, best weights, counters,
running sums), the data order, and every random number generator. Loaded with
``torch.load(weights_only=True)``, so a checkpoint can never run code.
"""

from __future__ import annotations

import io
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from trainlab.errors import UserError, first_line
from trainlab.files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "trainlab-checkpoint"
VERSION = 2  # 2: per-process random streams of data-parallel runs
PARTS = ("config", "model", "optimizer", "schedule", "loader", "engine", "rng", "processes")


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, foreign or written for another experiment."""


def rng_states() -> dict[str, Any]:
    """Torch (CPU and every CUDA device), Python and NumPy generator states."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy
    except ImportError:
        return states
    kind, keys, position, has_gauss, gauss = numpy.random.get_state()
    states["numpy"] = [kind, torch.from_numpy(keys.copy()), position, has_gauss, gauss]
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(_as_tuples(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        import numpy

        kind, keys, position, has_gauss, gauss = states["numpy"]
        numpy.random.set_state((kind, keys.numpy(), position, has_gauss, gauss))


def _plain(value: Any) -> Any:
    """Tuples as lists: what weights_only loading returns either way."""
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuples(item) for item in value)
    return value


def save_checkpoint(path: Path, parts: dict[str, Any]) -> None:
    """Write ``parts`` (every key of PARTS) to ``path`` atomically."""
    payload = {"format": FORMAT, "version": VERSION, **parts}
    buffer = io.BytesIO()  # serialized first: a failing write is then a plain OSError
    torch.save(payload, buffer)
    atomic_write(path, lambda file: file.write(buffer.getbuffer()))


def _damaged_part(path: Path) -> str | None:
    """The first part of a checkpoint (a zip archive) whose CRC-32 fails: torch.load reads
    the parts without checking them, so a flipped bit would load as a wrong weight."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None  # not a whole archive: torch.load says what it is


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; a missing, damaged or foreign file is a CheckpointError."""
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint; move it away and put the run's checkpoint "
            "file there to resume"
        )
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: the run stopped before its first checkpoint; run the "
            f"same command again (with hydra.run.dir={path.parent}) to start it over"
        )
    damaged = _damaged_part(path)
    if damaged is not None:
        raise CheckpointError(
            f"{path} is damaged: its part {damaged} fails its checksum (a damaged disk or an "
            "interrupted copy); put back a good copy, or delete it and start the run again"
        )
    try:
        with warnings.catch_warnings():  # the one line below says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle with code in it, not a torch file...
        reason = first_line(error) or type(error).__name__
        raise CheckpointError(
            f"{path} is damaged or not a trainlab checkpoint ({reason[:160]}); delete it and "
            "start the run again"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a trainlab checkpoint (no {FORMAT!r} marker); delete it and start "
            "the run again"
        )
    if payload.get("version") != VERSION or any(part not in payload for part in PARTS):
        raise CheckpointError(
            f"{path} was written by another trainlab version (format {payload.get('version')}, "
            f"this one reads {VERSION}); finish it with that version or start again"
        )
    return payload
