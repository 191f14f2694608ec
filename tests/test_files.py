"""Atomic writes: a failure while writing leaves the old file whole and no temporary behind."""

from __future__ import annotations

import errno

import pytest

from trainlab.files import OutputError, atomic_write, read_json, write_json


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"status": "running"})
    write_json(path, {"status": "completed", "loss": float("nan")})
    assert read_json(path) == {"status": "completed", "loss": None}  # strict JSON: NaN -> null
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_full_disk_keeps_the_old_file_and_names_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"previous checkpoint")

    def disk_full(file) -> None:
        file.write(b"half of a new one")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"cannot write .*checkpoint.pt: No space left on device"):
        atomic_write(path, disk_full)
    assert path.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_read_json_of_a_missing_or_broken_file_is_none(tmp_path):
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "broken.json").write_text('{"status": "runn')
    assert read_json(tmp_path / "broken.json") is None
