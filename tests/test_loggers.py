"""The TensorBoard event files: what a resume keeps of a damaged one, and a full disk while
TensorBoard writes, which must end in one line naming the file."""

from __future__ import annotations

import errno
import io
import logging
import os
import threading
from pathlib import Path

import pytest
from tensorboard.compat.tensorflow_stub.io import gfile
from torch.utils.tensorboard import SummaryWriter

from tests.test_resume import scalars
from trainlab.loggers import TensorBoardLogger, read_records, trim_events


def _log_steps(run_dir: Path, last: int) -> Path:
    writer = SummaryWriter(str(run_dir))
    for step in range(1, last + 1):
        writer.add_scalar("train/loss", float(step), step)
    writer.close()
    [path] = run_dir.glob("events.out.tfevents.*")
    return path


def test_a_record_damaged_in_the_middle_is_said_and_the_file_kept(tmp_path, caplog):
    path = _log_steps(tmp_path, 6)
    whole = path.read_bytes()
    records = read_records(path).records
    # Damage one byte inside the payload of the 4th record (file_version, then steps 1, 2, 3).
    start = sum(12 + len(raw) + 4 for raw in records[:3])
    damaged = bytearray(whole)
    damaged[start + 14] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert read_records(path).damaged == 12 + len(records[3]) + 4
    with caplog.at_level(logging.WARNING, logger="trainlab"):
        trim_events(tmp_path, step=6, epochs=0)
    assert [step for step, _ in scalars(tmp_path)["train/loss"]] == [1, 2, 4, 5, 6]  # 3 lost
    kept = path.with_name(path.name.replace("tfevents", "damaged"))
    assert kept.read_bytes() == bytes(damaged)  # the file as it was, beside the run
    assert f"is damaged: {12 + len(records[3]) + 4} of its" in caplog.text
    assert kept.name in caplog.text


def test_an_event_cut_short_by_a_kill_is_dropped_without_a_copy(tmp_path, caplog):
    path = _log_steps(tmp_path, 6)
    path.write_bytes(path.read_bytes()[:-7])  # the last record, half written
    assert read_records(path).cut_short > 0 and read_records(path).damaged == 0
    with caplog.at_level(logging.WARNING, logger="trainlab"):
        trim_events(tmp_path, step=6, epochs=0)
    assert [step for step, _ in scalars(tmp_path)["train/loss"]] == [1, 2, 3, 4, 5]
    assert "damaged" not in caplog.text and not list(tmp_path.glob("*damaged*"))


def test_a_full_disk_under_tensorboards_writer_is_one_error_naming_the_file(tmp_path, monkeypatch):
    """TensorBoard writes in a thread that re-raises in the next write; Python would also print
    the thread's traceback before trainlab's one line."""

    def full(self, filename, file_content, mode):
        Path(os.fsdecode(filename)).touch()  # opened, then the write fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gfile.LocalFileSystem, "_write", full)
    printed: list[BaseException] = []  # what Python would print, with its traceback
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_value))
    with pytest.raises(OSError) as raised:
        TensorBoardLogger(tmp_path, {"lr": 0.1})
    assert raised.value.errno == errno.ENOSPC
    assert Path(raised.value.filename).name.startswith("events.out.tfevents.")
    for thread in threading.enumerate():  # the writer thread has ended, quietly
        if type(thread).__name__ == "_AsyncWriterThread":
            thread.join(10)
    assert printed == []


def test_the_console_keeps_the_latest_validation_numbers_between_evaluations():
    from rich.console import Console

    from trainlab.loggers import ConsoleLogger
    from trainlab.optim import TrainingPlan

    logger = ConsoleLogger(Console(file=io.StringIO(), width=200), "run", "accuracy")
    logger.on_fit_start(TrainingPlan(epochs=3, steps_per_epoch=10))
    logger.on_log(5, 1, {"loss": 0.9})
    status = logger.progress.tasks[0].fields["status"]
    assert status == "epoch 1/3  loss 0.9"  # nothing evaluated yet
    scalars = {"train_loss": 0.8, "val_loss": 0.7, "val_accuracy": 0.61, "step": 10}
    logger.on_epoch_end(1, scalars)
    logger.on_log(15, 2, {"loss": 0.5})  # mid-epoch: the last evaluation stays on screen
    status = logger.progress.tasks[0].fields["status"]
    assert status == "epoch 2/3  loss 0.5  val_loss 0.7  val_accuracy 0.61"
    assert any(type(c).__name__ == "TimeRemainingColumn" for c in logger.progress.columns)
    logger.on_fit_end(None)
