"""GPU slots for sweeps that fill the hardware, on a fake list of GPUs (CI has none)."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from tests.helpers import needs_plugin
from trainlab.gpu_slots import claim_gpu, slot_order


def test_members_spread_over_gpus_before_sharing_one():
    assert slot_order(3, 2) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert slot_order(1, 1) == [(0, 0)]


def test_each_member_gets_a_free_slot_and_the_next_waits_for_one(tmp_path):
    with contextlib.ExitStack() as held:
        gpus = [
            held.enter_context(claim_gpu(tmp_path, gpus=2, members_per_gpu=2)) for _ in range(4)
        ]
        assert gpus == [0, 1, 0, 1]  # four slots on two GPUs, all taken now
        got: list[int] = []
        waiting = threading.Thread(target=lambda: got.append(_claim_once(tmp_path)))
        waiting.start()
        time.sleep(0.3)
        assert not got  # no slot free: it waits
    waiting.join(timeout=5)  # the slots were released: it got one
    assert got == [0]


def _claim_once(folder) -> int:
    with claim_gpu(folder, gpus=2, members_per_gpu=2, poll_seconds=0.05) as gpu:
        return gpu


def test_a_slot_is_free_again_after_its_member_ends(tmp_path):
    with claim_gpu(tmp_path, gpus=1, members_per_gpu=1) as first:
        assert first == 0
    with claim_gpu(tmp_path, gpus=1, members_per_gpu=1, poll_seconds=0.05) as again:
        assert again == 0


@needs_plugin["joblib"]
def test_the_gpus_launcher_runs_gpus_times_members_per_gpu_at_once():
    import torch
    from hydra import compose, initialize_config_dir

    from trainlab.preflight import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose(
            "config",
            overrides=["hydra/launcher=gpus", "members_per_gpu=3"],
            return_hydra_config=True,
        )
    assert config.hydra.launcher._target_.endswith("JoblibLauncher")
    assert config.hydra.launcher.n_jobs == max(1, torch.cuda.device_count()) * 3


def test_only_the_gpus_launcher_pins_members_to_gpu_slots(tmp_path, monkeypatch):
    """Under hydra/launcher=gpus a member takes a slot and sets its GPU; under SLURM (members
    on other nodes share the sweep folder) and others it leaves placement to the launcher."""
    import torch
    from omegaconf import OmegaConf

    from trainlab.gpu_slots import SLOTS_FOLDER
    from trainlab.gpu_slots import gpu_for_member as _gpu_for_member

    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    config = OmegaConf.create({"device": "auto", "members_per_gpu": 1})

    def hydra(launcher: str):
        return OmegaConf.create(
            {"runtime": {"choices": {"hydra/launcher": launcher}}, "sweep": {"dir": str(tmp_path)}}
        )

    for launcher in ("slurm", "joblib", "basic"):
        with _gpu_for_member(config, hydra(launcher)):
            pass
    assert chosen == [] and not (tmp_path / SLOTS_FOLDER).exists()
    with _gpu_for_member(config, hydra("gpus")), _gpu_for_member(config, hydra("gpus")):
        assert chosen == [0, 1]  # two members at once: one on each GPU
    with _gpu_for_member(OmegaConf.create({"device": "cpu", "members_per_gpu": 1}), hydra("gpus")):
        assert chosen == [0, 1]  # an explicit device is the user's choice


@pytest.mark.parametrize(
    ("visible", "local_rank", "local_world", "environ", "expected"),
    [
        (4, 2, 4, {}, 2),  # every task sees the node's 4 GPUs: the one of its local rank
        (1, 3, 4, {}, 0),  # SLURM bound one GPU to each task: its only one
        (8, 1, 2, {}, 1),  # more GPUs than processes
        (2, 2, 4, {}, None),  # two of four tasks see the same two GPUs: they would share
        (1, 1, 2, {"TORCHELASTIC_RUN_ID": "x"}, None),  # torchrun binds none: one GPU for two
    ],
)
def test_each_data_parallel_process_gets_a_gpu_of_its_own(
    visible, local_rank, local_world, environ, expected, monkeypatch
):
    import torch

    from trainlab.distributed import Processes, local_gpu
    from trainlab.errors import UserError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    processes = Processes(rank=local_rank, world=8, local_rank=local_rank, local_world=local_world)
    if expected is None:
        with pytest.raises(UserError, match="so some would share one"):
            local_gpu(processes, environ)
    else:
        assert local_gpu(processes, environ) == expected


def test_processes_given_the_same_gpu_are_found_by_host_and_uuid():
    from trainlab.distributed import sharing_a_gpu

    # SLURM's binding shows every task its GPU as cuda:0: the UUIDs tell them apart.
    assert sharing_a_gpu([("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-a")]) == []
    assert sharing_a_gpu([("n1", "GPU-a"), ("n2", "GPU-b"), ("n1", "GPU-a")]) == [0, 2]
    assert sharing_a_gpu([None, None, ("n1", "GPU-a")]) == []  # unknown: not compared


def test_local_world_size_comes_from_the_environment():
    from trainlab.distributed import from_environment

    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    processes = from_environment(env)
    assert (processes.rank, processes.world, processes.local_rank) == (5, 8, 1)
    assert processes.local_world == 4
    assert from_environment({"RANK": "1", "WORLD_SIZE": "2"}).local_world == 2
