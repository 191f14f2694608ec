"""The decoded-data cache of every file-backed dataset: decode the files once, keep the
result as tensors under ``<data root>/trainlab-cache/``, and reuse it while the files are unchanged.

A cache entry holds tensors and plain values (names, counts); beside them it records the
``fingerprint`` it was made for (the files' paths, sizes and modification times, plus every
setting that shaped the decoding) and a ``checksum``, the CRC-32 of its tensors, so a changed file, a changed setting or a damaged cache
each mean "decode again", never a wrong answer.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from trainlab.errors import UserError
from trainlab.files import OutputError, atomic_write

log = logging.getLogger("trainlab")


def cache_path(root: str | Path, name: str, key: str) -> Path:
    """Where the entry for ``key`` lives: one file per dataset name and key."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(root).expanduser() / "trainlab-cache" / f"{name}-{digest}.pt"


def files_key(paths: Iterable[Path], settings: Mapping[str, Any]) -> str:
    """A key that changes when any file's name, size or modification time, or any setting,
    changes."""
    entries = []
    for path in sorted(paths):
        try:
            status = path.stat()
        except OSError as error:  # a broken link, or a file removed since it was listed
            raise UserError(
                f"cannot read {path} ({error.strerror}); remove or replace it"
            ) from None
        entries.append([str(path.resolve()), status.st_size, status.st_mtime_ns])
    return json.dumps({"files": entries, "settings": dict(settings)}, sort_keys=True, default=str)


OWN = ("fingerprint", "checksum")  # the entry's own keys beside the data's


def _checksum(entry: Mapping[str, Any]) -> int:
    """CRC-32 of every tensor's bytes, in key order: catches a cache damaged after writing."""
    value = 0
    for name in sorted(entry):
        if isinstance(entry[name], torch.Tensor):
            value = zlib.crc32(entry[name].contiguous().view(torch.uint8).numpy().tobytes(), value)
    return value


def read_cache(path: Path, key: str | None) -> dict[str, Any] | None:
    """The data cached at ``path`` if it is intact and was made for ``key`` (None: whatever it
    was made from, for files that are gone), else None."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, weights_only=True)
        data = {name: value for name, value in entry.items() if name not in OWN}
        if key is not None and entry["fingerprint"] != key:
            return None  # made from other files or settings: decode again
        if entry["checksum"] == _checksum(data):
            return data
    except Exception:  # a truncated or foreign file: decode again
        pass
    log.warning("ignoring a damaged dataset cache %s; decoding the files again", path)
    return None


def write_cache(path: Path, key: str, data: dict[str, Any]) -> None:
    """Atomic: concurrent runs each write their own temporary file and the last rename wins; a
    cache that cannot be written is a warning, not a failure."""
    try:
        buffer = io.BytesIO()  # serialized first: a failing write is then a plain OSError
        torch.save({**data, "fingerprint": key, "checksum": _checksum(data)}, buffer)
        atomic_write(path, lambda file: file.write(buffer.getbuffer()))
    except OutputError as error:
        log.warning("%s; continuing without a dataset cache", error)
