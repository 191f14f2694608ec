"""Files that survive a crash: written to a temporary file, fsynced, then renamed into place.

A reader (or a run resumed after a SIGKILL) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from trainlab.errors import UserError


class OutputError(UserError):
    """A file trainlab must write could not be written (full disk, read-only folder...)."""


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``.

    On any failure the temporary file is removed and ``path`` keeps its previous contents;
    an OSError becomes an OutputError that names the file.
    """
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as file:
            temporary = file.name
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        temporary = None
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except OSError as error:
        raise OutputError(
            f"cannot write {path}: {error.strerror or error}; free some disk space or point "
            "hydra.run.dir / hydra.sweep.dir at a writable folder"
        ) from None
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open folders; the rename is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _strict_json(value: Any) -> Any:
    """NaN and infinities become null: strict JSON readers (jq, JavaScript) reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(item) for item in value]
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write strict JSON atomically."""
    text = json.dumps(_strict_json(data), indent=2, default=str, allow_nan=False) + "\n"
    atomic_write(path, lambda file: file.write(text.encode()))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class FolderLocked(Exception):
    """Another process holds the lock."""


def lock_folder(path: Path) -> int:
    """An exclusive ``flock`` on the lock file ``path`` (made if missing), held until the
    descriptor is closed or the process ends, however it ends; FolderLocked at once when
    another process holds it. A lock file its holder removed while we opened it is locked
    anew, so removing it on release is safe. A file system that has no locks is an
    OutputError, and the lock file made for it is removed."""
    while True:
        made = not path.exists()
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise FolderLocked(str(path)) from None
        except OSError as error:  # ENOLCK, EOPNOTSUPP: Lustre without -o flock, an old NFS
            os.close(descriptor)
            if made:
                path.unlink(missing_ok=True)
            raise OutputError(
                f"cannot lock {path}: {error.strerror or error}; trainlab locks a folder so that "
                "two processes never write one run, and this file system offers no locks: "
                "write the outputs to one that does (a local disk, or Lustre mounted with "
                "-o flock) with hydra.run.dir / hydra.sweep.dir"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        os.close(descriptor)  # its holder removed it between our open and our lock
