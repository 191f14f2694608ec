"""Runs that survive: SIGKILL anywhere then resume equals the uninterrupted run bit for bit;
SIGTERM and Ctrl-C checkpoint and stop; a sweep re-run skips, resumes and reruns members."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from tests.helpers import REPO, TINY, compose_config, map_in_workers, run_cli, train_run
from tests.image_files import write_idx_dataset
from trainlab.checkpoint import load_checkpoint
from trainlab.errors import UserError
from trainlab.run_folder import action_for, look

CONF = REPO / "conf"

# 4 steps per epoch, 12 in all; train/* every 2 steps; a checkpoint every 3 steps and epoch.
RUN = (*TINY, "model.dropout=0.2", "log_every_steps=2", "checkpoint.every_steps=3")
VOLATILE = {"epoch_seconds", "started_at", "finished_at", "wall_time_s", "pid", "resumes", "host"}


def drive(*args: str, cwd: Path, **kill: object) -> subprocess.CompletedProcess:
    """Run ``trainlab ARGS`` with the kill points of tests/kill_driver.py installed."""
    if "signal" in kill:
        kill["signal_name"] = kill.pop("signal")
    return run_cli(*args, cwd=cwd, driver=kill)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag.split("/")[0] in ("train", "epoch", "final"):
                    found[value.tag].append((event.step, value.tensor.float_val[0]))
    # Sorted: TensorBoard plots by step whatever the file order (file names order by second,
    # then by a per-process writer count, so two writers in one second may sort either way).
    return {tag: sorted(points) for tag, points in found.items()}


def outcome(run_dir: Path) -> tuple[dict, dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return {k: v for k, v in metrics.items() if k not in VOLATILE}, state


def assert_same_run(resumed: Path, reference: Path) -> None:
    metrics, state = outcome(resumed)
    expected_metrics, expected_state = outcome(reference)
    assert metrics == expected_metrics
    for part in ("model",):
        for key, tensor in expected_state[part].items():
            assert torch.equal(state[part][key], tensor), key
    for key, tensor in expected_state["engine"]["best_state"].items():
        assert torch.equal(state["engine"]["best_state"][key], tensor), key
    assert scalars(resumed) == scalars(reference)  # no step duplicated, missing or changed


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.parametrize(
    "kill",
    [
        {"after_batches": 5},  # mid-epoch 2, after the step-3 checkpoint
        {"after_batches": 8},  # right after epoch 2's checkpoint
        {"after_batches": 10},  # mid-epoch 3
        {"in_checkpoint_write": 3},  # during a checkpoint write: the previous one survives
        {"after_checkpoint": 6},  # after the last one, before the results were written
    ],
    ids=lambda kill: ",".join(f"{k}={v}" for k, v in kill.items()),
)
def test_sigkill_then_resume_equals_the_uninterrupted_run(kill, reference, tmp_path):
    run_dir = tmp_path / "run"
    killed = drive(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, **kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"
    resumed = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert not list(run_dir.glob(".*.tmp"))  # what the kill left half-written is gone
    assert_same_run(run_dir, reference)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert len(provenance["resumes"]) == 1 and provenance["finished_at"]


@pytest.mark.parametrize("name", ["TERM", "INT"])
def test_sigterm_and_ctrl_c_finish_the_step_checkpoint_and_stop(name, reference, tmp_path):
    run_dir = tmp_path / "run"
    stopped = drive(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, after_batches=6, signal=name)
    assert stopped.returncode == 130, stopped.stderr
    assert f"interrupted by SIG{name}" in stopped.stderr and "Traceback" not in stopped.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["steps"] == 7  # step 7 finished
    assert f"trainlab resume={run_dir}" in metrics["message"]
    resumed = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, reference)


def test_a_submitit_preemption_checkpoints_then_requeues_and_the_requeued_job_resumes(
    reference, tmp_path
):
    """submitit's protocol: SIGUSR2 before a preemption; its handler requeues the job and exits.
    trainlab finishes the step and checkpoints first; the requeued job (the same command) resumes.
    """
    sweep, record = tmp_path / "sweep", tmp_path / "requeued.txt"
    command = ("-m", "seed=0", *RUN, f"hydra.sweep.dir={sweep}")
    preempted = drive(*command, cwd=tmp_path, after_batches=5, signal="USR2", fake_submitit=record)
    assert preempted.returncode == 255, preempted.stderr  # submitit's sys.exit(-1)
    assert record.read_text() == "requeued at step 6\n"  # the checkpoint came first
    [member] = [p for p in sweep.iterdir() if p.is_dir()]
    assert json.loads((member / "metrics.json").read_text())["status"] == "interrupted"
    requeued = run_cli(*command, cwd=tmp_path)
    assert requeued.returncode == 0, requeued.stderr
    assert "1 run: 1 resume" in requeued.stdout
    assert_same_run(member, reference)


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """The first Ctrl-C waits for the step to end; a second does not wait for anything."""
    run_dir = tmp_path / "run"
    stopped = drive(
        *RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, after_batches=6, times=2, signal="INT"
    )
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.strip().splitlines() == [
        f"trainlab: interrupted; {run_dir} is marked interrupted"
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and "second Ctrl-C" in metrics["error"]
    assert load_checkpoint(run_dir / "checkpoint.pt")["engine"]["step"] == 6  # epoch 2's 2nd step
    resumed = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def test_an_early_stopped_run_killed_before_its_results_resumes_to_them(tmp_path):
    run = (*RUN, "epochs=8", "checkpoint.every_steps=null", "early_stopping.patience=1")
    reference = tmp_path / "reference"
    assert run_cli(*run, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    finished = json.loads((reference / "metrics.json").read_text())
    assert finished["status"] == "early_stopped" and finished["epochs_run"] < 8
    run_dir = tmp_path / "run"  # one checkpoint per epoch: kill after the last one
    killed = drive(
        *run, f"hydra.run.dir={run_dir}", cwd=tmp_path, after_checkpoint=finished["epochs_run"]
    )
    assert killed.returncode == -signal.SIGKILL
    assert run_cli(f"resume={run_dir}", cwd=tmp_path).returncode == 0
    assert_same_run(run_dir, reference)


def test_a_run_killed_before_its_first_checkpoint_is_run_again_by_the_same_command(
    reference, tmp_path
):
    run_dir = tmp_path / "run"
    killed = drive(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, in_checkpoint_write=1)
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 2 and "run the same command again" in resumed.stderr
    again = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not list(run_dir.glob(".*.tmp"))
    assert_same_run(run_dir, reference)


def test_a_run_killed_as_it_started_is_run_again_by_the_same_command(reference, tmp_path):
    """Killed after writing .hydra/ but before metrics.json (a node lost at start-up): the
    folder holds only the config and a half-written temporary file."""
    run_dir = tmp_path / "run"
    assert run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    for path in run_dir.iterdir():
        if path.name != ".hydra":
            path.unlink()
    (run_dir / ".metrics.json.x1y2z3.tmp").write_text('{"status": "runn')
    other = run_cli(*RUN, "seed=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert other.returncode == 2 and "holds a run of another config" in other.stderr
    again = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not list(run_dir.glob(".*.tmp"))
    assert_same_run(run_dir, reference)


def test_trimming_events_twice_after_a_kill_duplicates_nothing(tmp_path):
    """A kill between rewriting the first event file and deleting the others leaves both."""
    from torch.utils.tensorboard import SummaryWriter

    from trainlab.loggers import trim_events

    def log(first: int, last: int, suffix: str) -> None:
        writer = SummaryWriter(str(tmp_path), filename_suffix=suffix)
        for step in range(first, last + 1):
            writer.add_scalar("train/loss", float(step), step)
        writer.close()

    log(1, 6, ".a")  # killed at step 6, checkpoint at 3
    trim_events(tmp_path, step=3, epochs=0)
    log(4, 10, ".b")  # the resume, killed at step 10, checkpoint at 8
    second = sorted(tmp_path.glob("events.out.tfevents.*"))[1]
    copy = second.read_bytes()
    trim_events(tmp_path, step=8, epochs=0)
    second.write_bytes(copy)  # as if that kill came before the unlink
    trim_events(tmp_path, step=8, epochs=0)
    steps = [step for step, _ in scalars(tmp_path)["train/loss"]]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


def test_resume_may_extend_epochs(reference, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    longer = run_cli(f"resume={run_dir}", "epochs=5", "early_stopping.enabled=false", cwd=tmp_path)
    assert longer.returncode == 2 and "changes early_stopping.enabled" in longer.stderr
    longer = run_cli(f"resume={run_dir}", "epochs=5", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 5 and metrics["steps"] == 20
    assert "epochs: 5" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert [step for step, _ in scalars(run_dir)["epoch/train_loss"]] == [1, 2, 3, 4, 5]


def test_a_sweep_interrupted_halfway_resumes_where_it_stopped(tmp_path):
    sweep = tmp_path / "sweep"
    command = ("-m", "optimizer.lr=0.01,0.02,0.03,0.04", *RUN, f"hydra.sweep.dir={sweep}")
    # 12 batches per member: stop the third member after its 6th step.
    stopped = drive(*command, cwd=tmp_path, after_batches=30, signal="INT")
    assert stopped.returncode == 130, stopped.stderr
    assert "4 runs: 4 new" in stopped.stdout
    members = sorted(p for p in sweep.iterdir() if p.is_dir())
    statuses = [json.loads((m / "metrics.json").read_text())["status"] for m in members]
    assert statuses == ["completed", "completed", "interrupted"]
    hint = json.loads((members[2] / "metrics.json").read_text())["message"]
    assert f"run the same sweep command again with hydra.sweep.dir={sweep}" in hint
    first = (members[0] / "metrics.json").read_bytes()
    # Mark the second as failed: a re-run runs it again from scratch.
    failed = json.loads((members[1] / "metrics.json").read_text())
    failed["status"] = "failed"
    (members[1] / "metrics.json").write_text(json.dumps(failed))

    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "4 runs: 1 done, 1 resume, 1 rerun, 1 new" in again.stdout
    members = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert (members[0] / "metrics.json").read_bytes() == first  # skipped, untouched
    for member in members:
        assert json.loads((member / "metrics.json").read_text())["status"] == "completed"
        steps = [step for step, _ in scalars(member)["train/loss"]]
        assert steps == [2, 4, 6, 8, 10, 12], (member.name, steps)  # nothing duplicated


def test_a_sweep_member_that_fails_as_it_resumes_keeps_its_checkpoint(tmp_path):
    """Its data gone when the sweep is run again: the member is recorded failed, its checkpoint
    stays, and the next run of the sweep resumes it rather than starting it over."""
    data = tmp_path / "data"
    write_idx_dataset(data / "MNIST" / "raw", train=300, test=100, gzipped=False)
    sweep = tmp_path / "sweep"
    command = (
        "-m", "dataset=mnist", "dataset.download=false", f"dataset.root={data}",
        "dataset.val_size=100", "model=linear", "batch_size=50", "epochs=3",
        "log_every_steps=2", "seed=0", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    stopped = drive(*command, cwd=tmp_path, after_batches=6, signal="INT")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    [member] = [p for p in sweep.iterdir() if p.is_dir()]
    checkpoint = (member / "checkpoint.pt").read_bytes()

    data.rename(tmp_path / "away")
    failed = run_cli(*command, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr[-2000:]
    recorded = json.loads((member / "metrics.json").read_text())
    assert recorded["status"] == "failed" and "files missing in" in recorded["error"]
    assert (member / "checkpoint.pt").read_bytes() == checkpoint

    (tmp_path / "away").rename(data)
    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 run: 1 resume" in again.stdout
    assert json.loads((member / "metrics.json").read_text())["status"] == "completed"
    steps = [step for step, _ in scalars(member)["train/loss"]]
    assert steps == [2, 4, 6, 8, 10, 12]  # resumed at step 6: nothing run twice


def test_a_sweep_member_with_a_damaged_checkpoint_waits_for_it_to_be_deleted(tmp_path):
    """Failing as it resumes, before it trains, leaves the checkpoint for the user to judge:
    the member is recorded failed with the fix, and runs from scratch once it is deleted."""
    sweep = tmp_path / "sweep"
    command = ("-m", *RUN, "seed=0", f"hydra.sweep.dir={sweep}")
    stopped = drive(*command, cwd=tmp_path, after_batches=6, signal="INT")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    [member] = [p for p in sweep.iterdir() if p.is_dir()]
    checkpoint = member / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])

    failed = run_cli(*command, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "1 run: 1 resume" in failed.stdout
    recorded = json.loads((member / "metrics.json").read_text())
    assert recorded["status"] == "failed" and recorded["resumable"] is True
    assert "is damaged or not a trainlab checkpoint" in recorded["error"]
    assert "delete it and start the run again" in recorded["error"]
    assert checkpoint.stat().st_size == 1000  # still there: deleting it is the user's call

    checkpoint.unlink()
    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 run: 1 rerun" in again.stdout
    assert json.loads((member / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("recorded", "checkpoint", "state"),
    [
        ({"status": "failed", "resumable": True}, True, "resume"),
        ({"status": "failed", "resumable": True}, False, "rerun"),  # checkpoint deleted
        ({"status": "failed"}, True, "rerun"),  # failed before it could resume from one
        ({"status": "interrupted"}, True, "resume"),
    ],
)
def test_a_run_that_failed_after_a_checkpoint_is_resumed_not_redone(
    recorded, checkpoint, state, tmp_path
):
    run_dir = tmp_path / "run"
    config = compose_config(*RUN)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    (run_dir / "metrics.json").write_text(json.dumps(recorded))
    if checkpoint:
        (run_dir / "checkpoint.pt").write_bytes(b"a checkpoint")
    assert action_for(look(run_dir), run_dir, resume=False, multirun=True) == state
    if state == "resume":  # a single run is never resumed by accident: it says how
        with pytest.raises(UserError, match="continue it with resume=") as refusal:
            action_for(look(run_dir), run_dir, resume=False, multirun=False)
        assert f"delete {run_dir / 'checkpoint.pt'} to start it over" in str(refusal.value)


def _quiet_run(overrides, run_dir, **options):
    return train_run(compose_config(*overrides), run_dir, **options)


OPTIONS = [
    f"{group}={p.stem}"
    for group in ("optimizer", "schedule", "regularizer")
    for p in sorted((CONF / group).glob("*.yaml"))
] + ["accumulate_steps=3", "optimizer.clip_grad_norm=0.05"]


def _stop_resume_and_compare(option: str) -> str | None:
    """Stop after the 5th step (a graceful stop checkpoints), resume, compare bit for bit:
    None when equal, else what differs."""
    overrides = [*RUN, "epochs=4", option]
    if option == "schedule=plateau":
        overrides.append("schedule.patience=0")  # so the plateau state matters
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        expected = _quiet_run(overrides, root / "a")
        polls = iter(range(1000))
        stop_after_fifth_step = lambda: next(polls) == 5  # noqa: E731  (one poll per step, and per epoch)
        stopped = _quiet_run(overrides, root / "b", stop_requested=stop_after_fifth_step)
        if stopped["status"] != "interrupted":
            return f"not stopped: {stopped['status']}"
        _quiet_run(overrides, root / "b", resume=True)
        try:
            assert_same_run(root / "b", root / "a")
        except AssertionError as difference:
            return f"the resumed run differs: {difference}"
    return None if expected["status"] in ("completed", "early_stopped") else expected["status"]


@pytest.fixture(scope="module")
def stopped_and_resumed() -> dict[str, str | None]:
    return dict(zip(OPTIONS, map_in_workers(_stop_resume_and_compare, OPTIONS), strict=True))


@pytest.mark.parametrize("option", OPTIONS)
def test_every_optimizer_schedule_and_regularizer_resumes_exactly(option, stopped_and_resumed):
    assert stopped_and_resumed[option] is None, stopped_and_resumed[option]


def test_a_run_stopped_at_an_epochs_last_step_resumes_without_a_schedule_warning(tmp_path):
    """The resumed run steps the epoch schedule for the finished epoch before its first
    optimizer step; torch's order check would call that a misuse. It is not: the numbers match."""
    overrides = [*RUN, "epochs=3", "schedule=constant"]
    _quiet_run(overrides, tmp_path / "a")
    polls = iter(range(1000))
    stop_after_fourth_step = lambda: next(polls) == 3  # noqa: E731  (4 steps per epoch)
    stopped = _quiet_run(overrides, tmp_path / "b", stop_requested=stop_after_fourth_step)
    assert stopped["status"] == "interrupted" and "after step 4" in stopped["message"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet_run(overrides, tmp_path / "b", resume=True)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert_same_run(tmp_path / "b", tmp_path / "a")


def test_a_damaged_event_file_found_on_resume_is_said_with_what_is_lost(tmp_path, caplog):
    from torch.utils.tensorboard import SummaryWriter

    from trainlab.loggers import trim_events

    writer = SummaryWriter(str(tmp_path))
    for step in range(1, 11):
        writer.add_scalar("train/loss", float(step), step)
    writer.close()
    [path] = tmp_path.glob("events.out.tfevents.*")
    data = bytearray(path.read_bytes())
    size = len(data)
    data[size // 2] ^= 0xFF  # one damaged byte in the middle
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="trainlab"):
        trim_events(tmp_path, step=10, epochs=0)
    [warning] = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert str(path) in warning and f"of its {size} bytes cannot be read" in warning
    assert warning.endswith(f"kept as {path.name.replace('tfevents', 'damaged')}")
    assert path.with_name(path.name.replace("tfevents", "damaged")).read_bytes() == bytes(data)
    steps = [step for step, _ in scalars(tmp_path)["train/loss"]]
    assert steps == list(range(1, len(steps) + 1)) and 0 < len(steps) < 10  # whole up to it


def test_a_checkpoint_with_a_flipped_bit_is_refused_not_loaded(tmp_path):
    """torch.load does not check the CRCs its zip format stores; a flipped bit in a weight
    would load as a wrong number and the run would go on from it."""
    from trainlab.checkpoint import PARTS, CheckpointError, load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {part: {"weight": torch.arange(1000.0)} for part in PARTS})
    assert load_checkpoint(path)["model"]["weight"][999] == 999.0
    data = bytearray(path.read_bytes())
    data[data.index(struct.pack("<f", 999.0))] ^= 0x40  # a bit of the stored weight 999.0
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"is damaged: its part .* fails its checksum"):
        load_checkpoint(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint"):
        load_checkpoint(path)
