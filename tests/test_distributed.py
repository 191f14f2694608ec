"""Data-parallel runs: two gloo processes on the CPU give one run folder, one TensorBoard writer
and the numbers of a one-process run; a failing process ends the run; a killed run resumes.
What needs torchrun itself runs through the real torchrun; the rest starts the processes as
torchrun would, as forkserver children (tests.helpers.run_processes), seconds cheaper each."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
from omegaconf.errors import InterpolationKeyError

from tests.helpers import ENV, REPO, TINY, merged, run_cli, run_processes
from tests.test_resume import assert_same_run
from trainlab.errors import UserError

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)
RUN = (*TINY, "log_every_steps=2", "checkpoint.every_steps=3")
# Dropout draws per process, so only a run without it can match one process's numbers.
DROPOUT = "model.dropout=0.1"


def torchrun(*args: str, cwd: Path, script: str = "-m trainlab") -> subprocess.CompletedProcess:
    # --standalone: a free port of its own, so runs at the same time never meet
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    return subprocess.run(
        [*command, *script.split(), *merged(args)],
        cwd=cwd, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "run"
    assert run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=run_dir.parent).returncode == 0
    return run_dir


def test_two_processes_make_one_run_with_the_numbers_of_one_process(single, tmp_path):
    # (Started as torchrun starts them, in warm children: a fresh torchrun costs ten seconds of
    # imports. The real torchrun starts the next test's run, which one process then ends.)
    result = run_processes(*RUN, cwd=tmp_path)  # no hydra.run.dir: they must agree on one
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # one writer
    parallel, alone = metrics(run_dir), metrics(single)
    assert parallel["status"] == "completed" and parallel["processes"] == 2
    assert parallel["steps"] == alone["steps"] == 12  # the global batch is unchanged
    for split in ("val", "test"):
        for name, value in alone[split].items():
            assert parallel[split][name] == pytest.approx(value, rel=1e-5), (split, name)
    assert parallel["history"]["train_loss"] == pytest.approx(
        alone["history"]["train_loss"], rel=1e-5
    )
    assert result.stdout.count("trainlab: completed") == 1  # one console


def test_a_failing_process_ends_the_run_within_seconds(tmp_path):
    start = time.monotonic()
    driver = (
        f"{REPO / 'tests' / 'kill_driver.py'} --after-batches=5 --kill-with=RAISE --only-rank=1 --"
    )
    result = torchrun(
        *RUN, "epochs=50", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, script=driver
    )
    assert result.returncode != 0
    assert time.monotonic() - start < 60
    assert "a failure in this process only" in result.stderr
    # Its traceback only: process 0 (torchrun's SIGTERM or the lost connection, whichever
    # comes first) stops in one line.
    assert result.stderr.count("Error executing job") == 1


def test_clipping_and_accumulation_give_two_processes_the_numbers_of_one(tmp_path):
    """Micro-batches keep their gradients local until the step's last one, whose backward
    averages the sum over the processes; the clipped norm is the averaged gradient's."""
    knobs = ("accumulate_steps=2", "optimizer.clip_grad_norm=0.05")
    alone_dir, parallel_dir = tmp_path / "alone", tmp_path / "parallel"
    alone = run_cli(*RUN, *knobs, f"hydra.run.dir={alone_dir}", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    parallel = run_processes(*RUN, *knobs, f"hydra.run.dir={parallel_dir}", cwd=tmp_path)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    one, two = metrics(alone_dir), metrics(parallel_dir)
    assert two["processes"] == 2 and two["steps"] == one["steps"]
    for split in ("val", "test"):
        for name, value in one[split].items():
            assert two[split][name] == pytest.approx(value, rel=1e-5), (split, name)


@pytest.fixture(scope="module")
def parallel_reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("parallel") / "run"
    result = run_processes(*RUN, DROPOUT, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("how", ["KILL", "INT"])
def test_a_stopped_two_process_run_resumes_to_the_uninterrupted_numbers(
    how, parallel_reference, tmp_path
):
    """SIGKILL of process 0 (the other finds its peer gone and stops), or a Ctrl-C that reaches
    process 0 only: both processes must stop after the same step for the checkpoint to be whole."""
    run_dir = tmp_path / "run"
    stop = {"after_batches": 5, "signal_name": how, "only_rank": 0}
    stopped = run_processes(*RUN, DROPOUT, f"hydra.run.dir={run_dir}", cwd=tmp_path, driver=stop)
    assert stopped.returncode != 0
    expected = {"KILL": "running", "INT": "interrupted"}[how]
    assert metrics(run_dir)["status"] == expected
    if how == "INT":
        assert "torchrun --nproc-per-node=2 -m trainlab resume=" in metrics(run_dir)["message"]
        assert stopped.stderr.count("trainlab: interrupted by SIGINT") == 1  # process 0 only
    resumed = run_processes(f"resume={run_dir}", cwd=tmp_path)
    lines = [line for line in resumed.stderr.splitlines() if "trainlab" in line]
    assert resumed.returncode == 0, lines
    assert_same_run(run_dir, parallel_reference)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer=lbfgs"], "optimizer=lbfgs decides its line search"),
        (["batch_size=63"], "does not divide among 2 processes"),
    ],
)
def test_what_data_parallel_cannot_do_is_refused(overrides, message, tmp_path):
    result = run_processes(*TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert message in one_error(result.stderr)
    assert not (tmp_path / "run").exists()


def test_missing_data_fails_the_run_once_not_once_per_process(tmp_path):
    """Every process finds the data missing as it loads it: they agree, process 0 says it (its
    own error, not process 1's), no process waits for another, and since the run never started
    no folder is left."""
    missing = ("dataset=mnist", "dataset.download=false", "dataset.root=nowhere")
    result = run_processes(*TINY, *missing, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    error = one_error(result.stderr)
    assert "files missing in" in error and not error.startswith("trainlab: error: process 1")
    assert not (tmp_path / "run").exists()


def one_error(stderr: str) -> str:
    """The run's one error line: said once, by process 0, with no trainlab traceback (torchrun
    adds its own ChildFailedError report)."""
    [error] = [line for line in stderr.splitlines() if "trainlab: error" in line]
    assert error.startswith("trainlab: error: ")
    assert str(REPO / "trainlab") not in stderr and "Error executing job" not in stderr
    return error


# What each process's action does in test_processes_agree_on_any_failure, by case and rank.
AGREEMENT_CASES = {
    "none fails": (None, None),
    "one lacks data": (None, "user:no data on this node"),
    "both fail": ("user:first", "user:second"),
    "a bug on process 0": ("bug:x", None),
    "a bug on process 1": (None, "bug:y"),
    "an unresolved ${...} on process 1": (None, "config:Interpolation key 'z' not found"),
}


def _agree_in_process(rank: int, store: str, results: str) -> None:
    from trainlab.distributed import Processes, agreed

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2
    )
    processes = Processes(rank=rank, world=2, local_rank=rank, local_world=2)
    outcomes: dict[str, list] = {"kept alive": []}
    gc.disable()  # what a failure leaves referenced must be freed at once, not by a collection
    for case, failures in AGREEMENT_CASES.items():
        model = torch.nn.Linear(1, 1)  # stands for a run's model, which holds the group
        freed = weakref.ref(model)

        def action(failure=failures[rank], model=model):
            if failure is None:
                return rank * 10
            kind, text = failure.split(":")
            kinds = {"user": UserError, "bug": KeyError, "config": InterpolationKeyError}
            raise kinds[kind](text)

        try:
            outcomes[case] = ["returned", agreed(action, processes)]
        except Exception as error:
            outcomes[case] = [type(error).__name__, str(error)]
        del model, action
        if freed() is not None:
            outcomes["kept alive"].append(case)
    torch.distributed.destroy_process_group()
    Path(results, f"{rank}.json").write_text(json.dumps(outcomes))


def test_processes_agree_on_any_failure(tmp_path):
    """No process goes on alone: a failure anywhere ends the action on both, process 0 names it
    (with the process that had it), process 1 stays quiet, and a bug keeps its own exception
    where it happened."""
    torch.multiprocessing.spawn(
        _agree_in_process, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2
    )
    zero, one = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    # Kept alive past the failure, a model under DDP keeps the process group to the
    # interpreter's exit, where gloo aborts the process.
    assert zero["kept alive"] == one["kept alive"] == []
    assert zero["none fails"] == ["returned", 0] and one["none fails"] == ["returned", 10]
    assert zero["one lacks data"] == ["UserError", "process 1: no data on this node"]
    assert one["one lacks data"] == ["SharedError", "no data on this node"]
    assert zero["both fail"] == ["UserError", "first"]  # process 0's own, said once
    assert one["both fail"] == ["SharedError", "first"]
    assert zero["a bug on process 0"] == ["KeyError", "'x'"]  # raised as it was, traceback too
    crashed = "crashed (KeyError: {}); its traceback is in its own output"
    assert one["a bug on process 0"] == ["SharedError", crashed.format("'x'")]
    assert zero["a bug on process 1"] == ["UserError", "process 1: " + crashed.format("'y'")]
    assert one["a bug on process 1"] == ["KeyError", "'y'"]
    unresolved = "Interpolation key 'z' not found; check the overrides"
    assert zero["an unresolved ${...} on process 1"] == ["UserError", f"process 1: {unresolved}"]
    assert one["an unresolved ${...} on process 1"] == ["SharedError", unresolved]


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (
            getattr(torch.distributed, "DistNetworkError", RuntimeError)(
                "Connection closed by peer [127.0.0.1]:1"
            ),
            True,
        ),
        (RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"), True),
        (RuntimeError("Connection reset by peer"), True),
        (RuntimeError("CUDA out of memory"), False),
        (ValueError("Connection closed by peer"), False),
    ],
)
def test_a_lost_peer_is_told_from_a_failure_of_this_process(error, lost):
    from trainlab.distributed import lost_a_peer as _lost_a_peer

    assert _lost_a_peer(error) is lost
