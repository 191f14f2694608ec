"""A run folder never loses results, through the real command line: a finished run survives a
failed, stopped or killed extension byte for byte; two processes never share a folder or a
sweep; what a kill leaves is put right by the next command."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import TINY, run_cli, start_cli
from tests.image_files import write_idx_dataset
from tests.test_resume import scalars
from tests.test_run_folder import fingerprint

RUN = (*TINY, "log_every_steps=2")
MNIST = ("dataset=mnist", "dataset.download=false", "dataset.val_size=100", "model=linear")


def wait_until_stopped(pid: int, timeout: float = 60) -> None:
    """Until the process has stopped itself (SIGSTOP from the kill driver)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not stop")


def test_an_extension_whose_data_is_gone_changes_nothing(tmp_path):
    """The issue's case: finish a run, move its data away, extend it."""
    write_idx_dataset(tmp_path / "data" / "MNIST" / "raw", train=300, test=100, gzipped=False)
    run_dir, data = tmp_path / "run", f"dataset.root={tmp_path / 'data'}"
    assert (
        run_cli(*MNIST, data, "epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    )
    before = fingerprint(run_dir)
    (tmp_path / "data").rename(tmp_path / "away")
    extended = run_cli(f"resume={run_dir}", "epochs=3", cwd=tmp_path)
    assert extended.returncode == 2
    [line] = extended.stderr.strip().splitlines()
    assert "files missing in" in line and line.endswith(
        f"the finished run in {run_dir} is unchanged"
    )
    assert fingerprint(run_dir) == before
    again = run_cli(f"resume={run_dir}", cwd=tmp_path)  # it does not train on by itself
    assert again.returncode == 2 and "has finished all its 2 epochs" in again.stderr
    assert fingerprint(run_dir) == before


@pytest.mark.parametrize("write", [1, 2, 3, 4])
def test_an_extension_killed_as_it_starts_is_put_back_by_the_next_command(write, tmp_path):
    """SIGKILL after each of the extension's first writes (its kept copy, metrics.json,
    .hydra/config.yaml, provenance.json): the next command finds the finished run as it was."""
    run_dir = tmp_path / "run"
    assert run_cli(*RUN, "epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    before = fingerprint(run_dir)
    killed = run_cli(
        f"resume={run_dir}", "epochs=3", cwd=tmp_path, driver={"in_folder_write": write}
    )
    assert killed.returncode == -signal.SIGKILL
    refused = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert "has finished all its 2 epochs" in refused.stderr
    assert fingerprint(run_dir) == before
    if write != 4:
        return
    extended = run_cli(f"resume={run_dir}", "epochs=3", cwd=tmp_path)  # nothing in its way
    assert extended.returncode == 0, extended.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 3
    assert [step for step, _ in scalars(run_dir)["epoch/train_loss"]] == [1, 2, 3]


def test_an_extension_killed_while_it_trains_is_put_back(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(*RUN, "epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    before = fingerprint(run_dir)
    killed = run_cli(f"resume={run_dir}", "epochs=4", cwd=tmp_path, driver={"after_batches": 5})
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"
    report = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert "has finished all its 2 epochs" in report.stderr
    assert fingerprint(run_dir) == before


def test_two_processes_on_one_folder_one_runs_and_the_other_is_refused(tmp_path):
    """The first stops itself mid-run, holding the folder; the second, the same command with
    resume=, is refused at once in one line; the first goes on, and TensorBoard holds each
    scalar once."""
    run_dir = tmp_path / "run"
    assert run_cli(*RUN, "epochs=4", f"hydra.run.dir={run_dir}", cwd=tmp_path, driver={
        "after_batches": 5, "signal_name": "INT"}).returncode == 130  # fmt: skip
    first = start_cli(
        f"resume={run_dir}", cwd=tmp_path, driver={"after_batches": 2, "signal_name": "STOP"}
    )
    wait_until_stopped(first.pid)
    before = fingerprint(run_dir)
    for second in ([f"resume={run_dir}"], [*RUN, "epochs=4", f"hydra.run.dir={run_dir}"]):
        refused = run_cli(*second, cwd=tmp_path)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            f"trainlab: error: {run_dir} is in use by another trainlab process right now (it "
            "holds .trainlab.lock); wait for it to end, or choose another folder"
        ]
        assert fingerprint(run_dir) == before  # the refusal wrote nothing
    os.kill(first.pid, signal.SIGCONT)
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    steps = [step for step, _ in scalars(run_dir)["train/loss"]]
    assert steps == list(range(2, 17, 2))  # 16 steps, each logged once
    assert [
        len(points) for tag, points in scalars(run_dir).items() if tag.startswith("final/")
    ] == [1] * 6
    assert not (run_dir / ".trainlab.lock").exists()


def test_an_identical_sweep_started_meanwhile_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    command = ("-m", *RUN, "seed=0,1", f"hydra.sweep.dir={sweep}")
    first = start_cli(*command, cwd=tmp_path, driver={"after_batches": 2, "signal_name": "STOP"})
    wait_until_stopped(first.pid)
    second = run_cli(*command, cwd=tmp_path)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == (
        f"trainlab: error: {sweep} is in use by another trainlab sweep right now; wait for it "
        "to end, or choose another hydra.sweep.dir"
    )
    os.kill(first.pid, signal.SIGCONT)
    first.communicate(timeout=120)
    assert first.returncode == 0
    members = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(members) == 2
    for member in members:
        assert json.loads((member / "metrics.json").read_text())["status"] == "completed"
        assert [s for s, _ in scalars(member)["train/loss"]] == list(range(2, 13, 2))
    assert not (sweep / ".trainlab.lock").exists()
