"""The run folder's state machine and its rules, as units: what a folder's contents mean, the
lock, the all-or-nothing start, and an extension that is undone byte for byte."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import TINY, compose_config, train_run
from trainlab import files
from trainlab.errors import UserError
from trainlab.files import OutputError, atomic_write
from trainlab.job import Job
from trainlab.run_folder import (
    LOCK_NAME,
    UNDO_NAME,
    Bystander,
    FolderBusy,
    RunFolder,
    action_for,
    claimed,
    look,
    preview,
)
from trainlab.sweep import SweepSummary

RUN = (*TINY, "epochs=2")


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (the lock aside) and a hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LOCK_NAME
    }


def make_folder(run_dir: Path, metrics=None, checkpoint=False, config=True, extra=()) -> Path:
    """A run folder holding the given pieces (metrics: a dict, or raw text)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config:
        (run_dir / ".hydra").mkdir(exist_ok=True)
        (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(*RUN)))
    if metrics is not None:
        text = metrics if isinstance(metrics, str) else json.dumps(metrics)
        (run_dir / "metrics.json").write_text(text)
    if checkpoint:
        (run_dir / "checkpoint.pt").write_bytes(b"a checkpoint")
    for name in extra:
        (run_dir / name).write_text("someone else's\n")
    return run_dir


# (folder contents, explicit resume=, sweep member) -> what running into it does
ACTIONS = [
    ({"config": False}, False, False, "new"),
    ({"config": False}, False, True, "new"),
    ({"metrics": {"status": "completed"}, "checkpoint": True}, False, True, "done"),
    ({"metrics": {"status": "diverged"}}, False, True, "done"),
    ({"metrics": {"status": "completed"}, "checkpoint": True}, True, False, "resume"),  # extend
    ({"metrics": {"status": "interrupted"}, "checkpoint": True}, False, True, "resume"),
    ({"metrics": {"status": "running"}, "checkpoint": True}, False, True, "resume"),  # killed
    ({"metrics": {"status": "running"}, "checkpoint": True}, True, False, "resume"),
    (
        {"metrics": {"status": "failed", "resumable": True}, "checkpoint": True},
        False,
        True,
        "resume",
    ),
    ({"metrics": {"status": "failed"}, "checkpoint": True}, False, True, "rerun"),
    ({"metrics": {"status": "failed", "resumable": True}}, False, True, "rerun"),  # deleted ckpt
    ({"metrics": {"status": "running"}}, False, False, "rerun"),  # killed before a checkpoint
    ({}, False, False, "rerun"),  # killed as it started, before metrics.json (an old layout)
    ({"checkpoint": True}, True, False, "resume"),  # metrics.json deleted: only when asked to
]
REFUSALS = [
    ({"metrics": '{"status": "interr'}, False, True, "cannot be read"),  # unknown is not new
    ({"metrics": '{"status": "interr'}, True, False, "cannot be read"),
    ({"metrics": {"status": "pending"}}, False, True, "does not hold a trainlab status"),
    ({"metrics": {"status": "completed"}}, False, False, "already holds a run (completed)"),
    (
        {"metrics": {"status": "interrupted"}, "checkpoint": True},
        False,
        False,
        "continue it with resume=",
    ),
    ({"checkpoint": True}, False, True, "holds a checkpoint but no metrics.json"),
    ({"extra": ["provenance.json"]}, False, True, "holds a run's results but no metrics.json"),
    ({"metrics": {"status": "interrupted"}}, True, False, "stopped before its first checkpoint"),
    (
        {"metrics": {"status": "completed", "steps": 40}},
        True,
        False,
        "though the run got to step 40 (the file was moved or deleted",
    ),
    ({"config": False, "extra": ["notes.txt"]}, False, False, "already holds other files"),
]


@pytest.mark.parametrize(("contents", "resume", "multirun", "expected"), ACTIONS)
def test_what_a_folder_holds_decides_what_a_run_does(
    contents, resume, multirun, expected, tmp_path
):
    run_dir = make_folder(tmp_path / "run", **contents)
    before = fingerprint(run_dir)
    assert action_for(look(run_dir), run_dir, resume=resume, multirun=multirun) == expected
    assert fingerprint(run_dir) == before  # deciding changes nothing


@pytest.mark.parametrize(("contents", "resume", "multirun", "message"), REFUSALS)
def test_a_folder_whose_state_is_unknown_or_taken_is_refused(
    contents, resume, multirun, message, tmp_path
):
    run_dir = make_folder(tmp_path / "run", **contents)
    before = fingerprint(run_dir)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        action_for(look(run_dir), run_dir, resume=resume, multirun=multirun)
    assert fingerprint(run_dir) == before


def test_an_unreadable_metrics_json_of_a_stopped_run_is_refused_and_nothing_is_deleted(tmp_path):
    """The issue's case: truncate an interrupted run's metrics.json, run the same command."""
    run_dir = make_folder(
        tmp_path / "run", metrics='{"status": "interrupted", "hist', checkpoint=True
    )
    (run_dir / "events.out.tfevents.1.host.1.0").write_bytes(b"events")
    before = fingerprint(run_dir)
    with pytest.raises(UserError, match=r"cannot tell whether the run in .* finished"):
        train_run(compose_config(*RUN), run_dir, multirun=True)
    assert fingerprint(run_dir) == before
    assert not (run_dir / LOCK_NAME).exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [("{{{", "is unreadable"), ("seed: 1\n", "is not a list"), ("- 5\n", "is not a list")],
)
def test_a_damaged_overrides_yaml_is_refused_in_one_line(text, message, tmp_path):
    run_dir = make_folder(tmp_path / "run", metrics={"status": "interrupted"}, checkpoint=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(text)
    before = fingerprint(run_dir)
    with pytest.raises(UserError, match=f"overrides.yaml {message}.*restore it"):
        train_run(compose_config(*RUN), run_dir, multirun=True)
    assert fingerprint(run_dir) == before


def _hold_lock(path: str, ready, done) -> None:
    folder = RunFolder.claim(Path(path))
    ready.set()
    done.wait(30)
    folder.release()


def test_a_second_process_on_a_claimed_folder_is_refused_at_once(tmp_path):
    run_dir = tmp_path / "run"
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(run_dir), ready, done))
    holder.start()
    assert ready.wait(30)
    with pytest.raises(FolderBusy, match="is in use by another trainlab process right now"):
        RunFolder.claim(run_dir)
    with pytest.raises(FolderBusy):  # a sweep's preflight sees it too
        preview(compose_config(*RUN), run_dir, [])
    done.set()
    holder.join(30)
    folder = RunFolder.claim(run_dir)  # free again once its holder is gone
    folder.release()
    assert not (run_dir / LOCK_NAME).exists()


def test_a_lock_released_by_a_dead_holder_is_free(tmp_path):
    """The kernel releases an flock when its process dies, however it dies."""
    run_dir = tmp_path / "run"
    context = multiprocessing.get_context("fork")
    ready, never = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(run_dir), ready, never))
    holder.start()
    assert ready.wait(30)
    holder.kill()
    holder.join(30)
    assert (run_dir / LOCK_NAME).exists()  # left behind by the kill...
    RunFolder.claim(run_dir).release()  # ...and free


def test_a_file_system_without_locks_is_refused_in_one_line_and_leaves_nothing(
    tmp_path, monkeypatch
):
    """Lustre without -o flock, an old NFS: flock fails with ENOLCK or EOPNOTSUPP."""

    def no_locks(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(files.fcntl, "flock", no_locks)
    run_dir = tmp_path / "outputs" / "run"
    with pytest.raises(OutputError, match="No locks available; trainlab locks a folder"):
        RunFolder.claim(run_dir)
    assert not (tmp_path / "outputs").exists()
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    with pytest.raises(SystemExit) as refused:  # a sweep's hold on its folder, the same way
        SweepSummary().on_multirun_start(config)
    assert refused.value.code == 2 and not (tmp_path / "sweep").exists()


def test_a_refused_new_run_leaves_no_folder(tmp_path):
    run_dir = tmp_path / "outputs" / "runs" / "day" / "time"
    with pytest.raises(UserError, match="model=cnn needs image data"):
        train_run(compose_config(*RUN, "model=cnn"), run_dir)
    assert not (tmp_path / "outputs").exists()


def test_a_start_that_fails_halfway_takes_back_what_it_wrote(tmp_path, monkeypatch):
    """A full disk as the run starts: no half-made .hydra/ that no command would accept."""
    import trainlab.run_folder as run_folder

    real = run_folder.atomic_write

    def failing(path, write, *args, **kwargs):
        if path.name == "config.yaml":
            raise run_folder.OutputError(f"cannot write {path}: No space left on device")
        return real(path, write, *args, **kwargs)

    monkeypatch.setattr(run_folder, "atomic_write", failing)
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match="No space left"):
        train_run(compose_config(*RUN), run_dir)
    assert not run_dir.exists()


@pytest.fixture
def finished(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    train_run(compose_config(*RUN), run_dir)
    return run_dir


def test_an_extension_that_fails_in_training_leaves_the_finished_run_byte_for_byte(
    finished, monkeypatch
):
    import trainlab.run_folder as run_folder

    before = fingerprint(finished)
    calls = {"n": 0}
    real = run_folder.save_checkpoint

    def crash_on_second(path, parts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("a bug in the middle of the extension")
        real(path, parts)

    monkeypatch.setattr(run_folder, "save_checkpoint", crash_on_second)
    with pytest.raises(RuntimeError, match="a bug in the middle"):
        train_run(compose_config(*RUN, "epochs=5"), finished, resume=True, overrides=["epochs=5"])
    assert fingerprint(finished) == before
    assert sorted(p.name for p in finished.iterdir()) == sorted({p.split("/")[0] for p in before})
    # And the run can still be extended: nothing of the failed attempt is in the way.
    extended = train_run(
        compose_config(*RUN, "epochs=3"), finished, resume=True, overrides=["epochs=3"]
    )
    assert extended["status"] == "completed" and extended["epochs_run"] == 3


def test_a_stopped_extension_is_undone_and_says_so(finished):
    before = fingerprint(finished)
    polls = iter(range(1000))
    metrics = train_run(
        compose_config(*RUN, "epochs=4"), finished, resume=True, overrides=["epochs=4"],
        stop_requested=lambda: next(polls) == 1,
    )  # fmt: skip
    assert metrics["status"] == "interrupted"
    assert metrics["message"] == (
        f"the extension was undone: {finished} holds the finished run as it was; run the same "
        "command to extend it"
    )  # not "continue it with resume=": that finds the run finished
    assert fingerprint(finished) == before


def test_an_extension_killed_midway_is_put_back_by_the_next_command(finished):
    """A kill cannot clean up: the kept copy stays, and whoever claims the folder next puts the
    finished run back before deciding anything."""
    before = fingerprint(finished)
    folder = RunFolder.claim(finished)
    plan = folder.plan(compose_config(*RUN, f"resume={finished}", "epochs=4"), ["epochs=4"], False)
    assert plan.extends
    config = OmegaConf.create(plan.config)
    folder.start(config, Job(run_dir=finished), from_step=8)
    # What the extension wrote before it was killed (trainlab replaces files, never edits them).
    atomic_write(finished / "checkpoint.pt", lambda file: file.write(b"a newer checkpoint"))
    (finished / "events.out.tfevents.2.host.2.0").write_bytes(b"the extension's events")
    os.close(folder._lock)  # the process dies here: no clean-up of any kind
    assert (finished / UNDO_NAME).is_dir()
    assert json.loads((finished / "metrics.json").read_text())["status"] == "running"
    with pytest.raises(UserError, match="has finished all its 2 epochs"):
        train_run(compose_config(*RUN), finished, resume=True)
    assert fingerprint(finished) == before


def test_an_extension_that_finished_but_was_killed_before_its_clean_up_keeps_its_results(
    finished,
):
    train_run(compose_config(*RUN, "epochs=3"), finished, resume=True, overrides=["epochs=3"])
    results = fingerprint(finished)
    (finished / UNDO_NAME).mkdir()  # as if killed between the results and the clean-up
    (finished / UNDO_NAME / "manifest.json").write_text(json.dumps({"files": [], "metrics": ""}))
    with pytest.raises(UserError, match="has finished all its 3 epochs"):
        train_run(compose_config(*RUN), finished, resume=True)
    assert fingerprint(finished) == results and not (finished / UNDO_NAME).exists()


def test_the_other_processes_of_a_data_parallel_run_write_nothing(tmp_path):
    stand_in = Bystander(tmp_path / "run")
    stand_in.start(compose_config(*RUN), Job(run_dir=tmp_path / "run"), 0)
    stand_in.save_checkpoint({"model": {}})
    assert stand_in.finish({"status": "completed"}) == {"status": "completed"}
    assert not (tmp_path / "run").exists()


def test_claimed_records_what_the_policy_decides(tmp_path):
    """A sweep member that fails after it was planned records failed; its error carries the
    outcome the command line reports."""
    from trainlab.distributed import Processes, Team
    from trainlab.run_folder import outcome_of

    run_dir = tmp_path / "member"
    with pytest.raises(UserError) as raised, claimed(run_dir, True, Team(Processes())) as folder:
        folder.plan(compose_config(*RUN), [], multirun=True)
        raise UserError("dataset=mnist: files missing in nowhere")
    outcome = outcome_of(raised.value)
    assert outcome is not None and outcome.record == "failed" and outcome.exit_code is None
    recorded = json.loads((run_dir / "metrics.json").read_text())
    assert recorded["status"] == "failed" and "files missing" in recorded["error"]


def test_a_run_made_before_a_setting_existed_resumes_with_its_default(tmp_path):
    """trainlab grows settings (report.* here); a run saved without one takes its default."""
    from trainlab.resume import config_for_resume

    given = compose_config(*RUN, "epochs=4")
    saved = OmegaConf.create(OmegaConf.to_container(compose_config(*RUN), resolve=True))
    del saved["report"]
    merged = config_for_resume(saved, given, ["epochs=4"], tmp_path)
    assert merged.report == {"metric": None, "why": None} and merged.epochs == 4


def test_settings_added_since_a_run_was_made_are_no_change_unless_set(tmp_path):
    """A failed member of a sweep started before trainlab gained a setting is rerun by the same
    command (the new setting holds its default); set on the command line, it is a change."""
    from trainlab.run_folder import check_same_config

    config = compose_config(*TINY)
    saved = OmegaConf.to_container(config)
    del saved["accumulate_steps"], saved["early_stopping"]["monitor"]  # as an older trainlab
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    check_same_config(tmp_path, config, multirun=True, overrides=list(TINY))
    with pytest.raises(UserError, match=r"accumulate_steps \(run has <absent>, given 2\)"):
        check_same_config(
            tmp_path, compose_config(*TINY, "accumulate_steps=2"), multirun=True,
            overrides=[*TINY, "accumulate_steps=2"],
        )  # fmt: skip
    with pytest.raises(UserError, match="epochs"):
        check_same_config(
            tmp_path, compose_config(*TINY[:3], "epochs=9"), multirun=True, overrides=["epochs=9"]
        )
