"""hydra/launcher=slurm: the launcher config composes to one task per GPU, and real sweeps go
through hydra-submitit-launcher and submitit onto a stand-in SLURM (tests/fake_slurm.py) where
each member is a job of several tasks on two "nodes" that train one data-parallel run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.fake_slurm import install
from tests.fake_slurm import warm_node as warm_node_at
from tests.helpers import member_metrics, run_cli, start_child
from tests.image_files import write_idx_dataset
from tests.test_distributed import RUN
from trainlab.preflight import CONFIG_DIR

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the sweep extra")
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)
TWO_NODES = ("hydra/launcher=slurm", "hydra.launcher.nodes=2")
QUICK = {"quick_submitit": True}  # submitit's cluster-sized waits, short (tests/kill_driver.py)


def launcher(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose("config", ["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(config.hydra.launcher, resolve=True)


def test_the_slurm_launcher_asks_for_one_task_per_gpu():
    one_node = launcher("hydra.launcher.gpus_per_node=4")
    assert (one_node["nodes"], one_node["gpus_per_node"], one_node["tasks_per_node"]) == (1, 4, 4)
    two_nodes = launcher("hydra.launcher.gpus_per_node=4", "hydra.launcher.nodes=2")
    assert (two_nodes["nodes"], two_nodes["tasks_per_node"]) == (2, 4)
    assert two_nodes["_target_"] == "hydra_plugins.trainlab_launchers.TrainlabSlurmLauncher"
    assert "export SLURM_KILL_BAD_EXIT=1" in two_nodes["setup"]
    assert two_nodes["max_num_timeout"] >= 1  # a timed-out member is requeued and resumes
    cpu_only = launcher("hydra.launcher.gpus_per_node=null", "hydra.launcher.tasks_per_node=1")
    assert (cpu_only["gpus_per_node"], cpu_only["tasks_per_node"]) == (None, 1)


def test_cfg_hydra_shows_the_composed_launcher(tmp_path):
    result = run_cli(
        "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=8", "hydra.launcher.nodes=2",
        "hydra.launcher.partition=gpu",
        "--cfg", "hydra", "-p", "hydra.launcher", "--resolve", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = OmegaConf.create(result.stdout.split("\n", 1)[1])  # after "# @package ..."
    assert (shown.nodes, shown.gpus_per_node, shown.tasks_per_node) == (2, 8, 8)
    assert shown.partition == "gpu" and shown.timeout_min == 60
    assert not (tmp_path / "outputs").exists()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("one-process") / "run"
    assert run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=run_dir.parent).returncode == 0
    return run_dir


@pytest.fixture(scope="module")
def warm_node(tmp_path_factory) -> Iterator[str]:
    """Tasks forked from a process that has imported torch and trainlab (tests/fake_slurm.py),
    itself a child of the tests' forkserver, which has imported them already."""
    path = str(tmp_path_factory.mktemp("warm-node") / "node.socket")
    node = start_child(warm_node_at, path)
    for _ in range(600):
        if Path(path).exists():
            break
        time.sleep(0.05)
    yield path
    node.kill()
    node.join()


@pytest.fixture
def fake_slurm(tmp_path, warm_node) -> dict[str, str]:
    return {**install(tmp_path / "bin", tmp_path / "slurm-state"), "FAKE_SLURM_WARM": warm_node}


def test_a_dead_process_ends_the_sweep_in_one_line_and_the_same_command_finishes_it(
    fake_slurm, tmp_path
):
    sweep = tmp_path / "sweep"
    command = (
        "-m", *TWO_NODES, *RUN, "epochs=12", "early_stopping.enabled=false", "seed=0",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    # Task 1 (the second node) dies as soon as the member has written a checkpoint.
    start = time.monotonic()
    dying = {**fake_slurm, "FAKE_SLURM_KILL_TASK": f"1:{sweep}/*/checkpoint.pt"}
    result = run_cli(*command, cwd=tmp_path, env=dying, driver=QUICK)
    assert result.returncode == 1, result.stderr[-3000:]
    assert time.monotonic() - start < 120  # ended, not hung
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("trainlab: error: a sweep member's job ended without a result")
    assert f"its logs are in {sweep}/.submitit/" in last
    assert "Traceback" not in result.stdout + result.stderr
    [member] = member_metrics(sweep).values()
    # Killed by srun with its peer ("running"), or it saw the peer vanish first and recorded
    # the failure: either way it resumes from its checkpoint.
    assert member["status"] in ("running", "failed"), member

    again = run_cli(*command, cwd=tmp_path, env=fake_slurm, driver=QUICK)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 run: 1 resume" in again.stdout
    [member] = member_metrics(sweep).values()
    assert member["status"] == "completed" and member["epochs_run"] == 12


def test_a_preempted_member_checkpoints_is_requeued_and_resumes_to_the_same_numbers(
    fake_slurm, one_process, tmp_path
):
    """SIGUSR2 (SLURM's notice before a preemption or time-out) reaches both processes of a
    member: they stop after the same step, process 0 checkpoints and requeues the job through
    submitit, and the requeued job resumes to the numbers of an uninterrupted run."""
    sweep = tmp_path / "sweep"
    notice = {**fake_slurm, "FAKE_SLURM_SIGNAL": f"USR2:{sweep}/*/checkpoint.pt"}
    result = run_cli(
        "-m",
        *TWO_NODES,
        *RUN,
        "seed=0",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        env=notice,
        driver=QUICK,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (tmp_path / "slurm-state" / "signal-sent").exists()
    [metrics] = member_metrics(sweep).values()
    assert metrics["status"] == "completed" and metrics["resumes"] == 1
    alone = json.loads((one_process / "metrics.json").read_text())
    for split in ("val", "test"):
        for name, value in alone[split].items():
            assert metrics[split][name] == pytest.approx(value, rel=1e-5), (split, name)
    assert (tmp_path / "slurm-state" / "requeued").read_text() == "1000\n"  # by process 0
    # Process 1 of the first attempt ended cleanly: had it failed, srun (SLURM_KILL_BAD_EXIT)
    # could have ended process 0 before its requeue.
    assert "attempt 0 task 1 exit 0" in (tmp_path / "slurm-state" / "exits").read_text()
    logs = "".join(path.read_text() for path in sweep.glob(".submitit/*/*_1_log.*"))
    assert "Not checkpointing nor requeuing since I am a slave" in logs  # process 1 left it


MNIST = (
    "dataset=mnist", "dataset.download=false", "dataset.val_size=100", "model=linear",
    "epochs=2", "log_every_steps=2",
)  # fmt: skip
# The members of one sweep, by array index: where each one's two "nodes" find the data.
NODES = {
    "seed=0": "both nodes hold the data",
    "seed=1": "1.1:TRAINLAB_DATA={root}/empty",  # the second node lacks it
    "seed=2": "2.0,2.1:TRAINLAB_DATA={root}/empty",  # neither has it
    "seed=3": "3.1:TRAINLAB_DATA={root}/smaller",  # the second holds a smaller copy
}


def test_a_two_node_sweep_trains_members_as_data_parallel_runs_and_agrees_on_setup_errors(
    fake_slurm, tmp_path
):
    """Four members, each one job of two tasks on two "nodes". With the data on both, a member
    trains as one data-parallel run with the numbers of one process. Where a node lacks the
    data, or holds a smaller copy, the processes agree on the error before training: the member
    is recorded failed with it (naming the process when only another one had it), every task
    ends cleanly, and the sweep prints its table and exits 1, without a hang."""
    write_idx_dataset(tmp_path / "data" / "MNIST" / "raw", train=300, test=100, gzipped=False)
    write_idx_dataset(tmp_path / "smaller" / "MNIST" / "raw", train=200, test=100, gzipped=False)
    data = {"TRAINLAB_DATA": str(tmp_path / "data")}
    alone = tmp_path / "alone"
    assert (
        run_cli(*MNIST, "seed=0", f"hydra.run.dir={alone}", cwd=tmp_path, env=data).returncode == 0
    )
    sweep, start = tmp_path / "sweep", time.monotonic()
    nodes = ";".join(v.format(root=tmp_path) for v in NODES.values() if ":" in v)
    result = run_cli(
        "-m", *TWO_NODES, *MNIST, "seed=0,1,2,3", f"hydra.sweep.dir={sweep}",
        "hydra.launcher.setup=[echo node-setup]",  # replaced, yet the kill-on-bad-exit stays
        cwd=tmp_path, env={**fake_slurm, **data, "FAKE_SLURM_TASK_ENV": nodes}, driver=QUICK,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert time.monotonic() - start < 120
    assert "3 of 4 runs failed" in result.stdout  # the sweep's table, then the count
    assert "Traceback" not in result.stdout + result.stderr
    [script] = (tmp_path / "slurm-state").glob("job*")  # one job array, as submitted
    submitted = script.read_text()
    for line in ("--array=0-3%4", "--nodes=2", "--ntasks-per-node=1", "--signal=USR2@120"):
        assert f"#SBATCH {line}" in submitted
    assert "export SLURM_KILL_BAD_EXIT=1\necho node-setup" in submitted
    members = {name.rsplit(",", 1)[-1]: m for name, m in member_metrics(sweep).items()}
    assert sorted(members) == sorted(NODES)

    # Both nodes hold the data: two processes give one process's numbers, one writer.
    trained, reference = members["seed=0"], json.loads((alone / "metrics.json").read_text())
    assert trained["status"] == "completed" and trained["processes"] == 2
    for split in ("val", "test"):
        for name, value in reference[split].items():
            assert trained[split][name] == pytest.approx(value, rel=1e-5), (split, name)
    [folder] = [sweep / name for name in member_metrics(sweep) if name.endswith("seed=0")]
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    # A node that lacks the data, or holds other data, fails its member on every process.
    expected = {
        "seed=1": ("files missing in", "empty", True),
        "seed=2": ("files missing in", "empty", False),
        "seed=3": ("differs from process 0's (train_size 100 vs 200)", "smaller", True),
    }
    for seed, (error, copy, other_process) in expected.items():
        member = members[seed]
        assert member["status"] == "failed", seed
        assert error in member["error"] and copy in member["error"], member["error"]
        assert member["error"].startswith("process 1: ") == other_process, member["error"]
    # Written as srun sees its tasks end: their results are in before they have exited, and
    # tearing torch down takes seconds on a busy machine.
    exits = tmp_path / "slurm-state" / "exits"
    for _ in range(600):
        if exits.exists() and len(exits.read_text().splitlines()) == 8:
            break
        time.sleep(0.1)
    assert exits.read_text().count("exit 0") == 8, exits.read_text()  # every task ended cleanly
    # Process 1 of each member stayed quiet and left the reporting to process 0.
    for own_log in sweep.glob(".submitit/*/*_1_log.err"):
        assert "trainlab: error" not in own_log.read_text()
    [quiet] = sweep.glob(".submitit/*_0/*_0_1_log.out")
    assert "completed" not in quiet.read_text().replace("Job completed successfully", "")
