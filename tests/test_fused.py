"""Sweep members trained together (hydra/launcher=fused) end with the numbers they reach alone:
each member's metrics.json equals its solo run's within 1e-5 (relative), whatever the group
mixes (optimizers, schedules, losses, regularizers, clipping, early stopping, divergence)."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    compose_config,
    member_metrics,
    run_cli,
    tensorboard_experiment,
    train_run,
)
from trainlab.fused_groups import group_members

SMALL = (
    "dataset.train_size=256", "dataset.val_size=64", "dataset.test_size=64", "epochs=4",
    "batch_size=64", "log_every_steps=2", "early_stopping.patience=2",
)  # fmt: skip
RTOL = 1e-5
# vmap runs the margin losses member by member, and says so (the numbers are torch's own)
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")

# Each group: members that differ in what a group may mix.
GROUPS = {
    "sgd family": [
        (
            "optimizer=sgd",
            "optimizer.lr=0.1",
            "schedule=step",
            "schedule.step_epochs=1",
            "early_stopping.enabled=false",
        ),
        (
            "optimizer=momentum",
            "optimizer.lr=0.05",
            "schedule=cosine",
            "loss=hinge",
            "regularizer=l2",
            "regularizer.strength=0.01",
        ),
        (
            "optimizer=nesterov",
            "optimizer.lr=0.02",
            "schedule=exponential",
            "loss=kl_div",
            "regularizer=elastic_net",
            "optimizer.clip_grad_norm=0.5",
            "seed=5",
        ),
        ("optimizer=momentum", "optimizer.lr=1e4"),  # diverges
        (
            "optimizer=sgd",
            "optimizer.lr=0.3",
            "early_stopping.patience=1",
            "seed=3",
            "regularizer=l1",
            "schedule=plateau",
            "schedule.patience=0",
            "epochs=6",
        ),
    ],
    "adam family": [
        ("optimizer=adam", "optimizer.lr=0.01", "schedule=warmup_cosine"),
        ("optimizer=adamw", "optimizer.lr=0.003", "schedule=onecycle", "loss.label_smoothing=0.1"),
        (
            "optimizer=adam",
            "optimizer.lr=0.02",
            "optimizer.amsgrad=true",
            "seed=1",
            "early_stopping.patience=1",
            "epochs=8",
        ),
    ],
    "log_loss": [
        ("loss=log_loss", "optimizer=sgd", "optimizer.lr=0.1"),
        ("loss=log_loss", "optimizer=momentum", "optimizer.lr=0.05", "seed=1"),
    ],
    "regression": [
        ("dataset.task=regression", "loss=mse", "optimizer=sgd", "optimizer.lr=0.01"),
        ("dataset.task=regression", "loss=huber", "optimizer=momentum", "optimizer.lr=0.01"),
    ],
    "ranking": [
        ("dataset.task=ranking", "dataset.list_size=12", "loss=listwise", "optimizer.lr=0.01"),
        ("dataset.task=ranking", "dataset.list_size=12", "loss=pairwise", "optimizer.lr=0.003"),
    ],
    "ten classes, a short last batch": [
        ("dataset.classes=10", "dataset.train_size=300", "optimizer.lr=0.01"),
        ("dataset.classes=10", "dataset.train_size=300", "optimizer.lr=0.003", "loss=hinge"),
        ("dataset.classes=10", "dataset.train_size=300", "loss=squared_hinge", "seed=2"),
        ("dataset.classes=10", "dataset.train_size=300", "loss=kl_div", "optimizer=adamw"),
    ],
    "full batch": [
        ("optimizer=gd", "optimizer.lr=0.5"),
        ("optimizer=gd", "optimizer.lr=0.1", "regularizer=l2"),
    ],
}


# Groups of mlp members with cross_entropy, hinge and kl_div train bit for bit as alone
# (trainlab.fused_engine.StackedLinear, fused_optim's torch-ordered arithmetic); vmap'd models
# (ranking's item scorer), log_loss and some regression losses round differently in the last
# bit.
EXACT = {"sgd family", "adam family", "ten classes, a short last batch", "full batch"}


def fused_runs(configs, run_dirs) -> list[dict]:
    """The members trained together in this process, as the fused launcher runs a group."""
    import os

    from rich.console import Console

    from trainlab.fused_run import Member, run_group
    from trainlab.job import Job

    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    members = [
        Member(config, Job(run_dir=Path(d), multirun=True, console=quiet))
        for config, d in zip(configs, run_dirs, strict=True)
    ]
    run_group(members)
    return [member.outcome for member in members]


TIMES = {"finished_at", "started_at", "wall_time_s", "epoch_seconds", "pid", "host"}
LOGGED_LOSS = {"train_loss", "train_penalty"}  # the batch losses summed as training logs them


def assert_same_numbers(fused, alone, where="", rtol=RTOL, skip=TIMES) -> None:
    """Every number of two metrics.json equal within ``rtol`` (``skip``'s keys aside)."""
    if isinstance(alone, dict):
        assert fused.keys() == alone.keys(), where
        for key in alone.keys() - skip:
            assert_same_numbers(fused[key], alone[key], f"{where}.{key}", rtol, skip)
    elif isinstance(alone, list):
        assert len(fused) == len(alone), where
        for index, (one, other) in enumerate(zip(fused, alone, strict=True)):
            assert_same_numbers(one, other, f"{where}[{index}]", rtol, skip)
    elif isinstance(alone, float) and not isinstance(fused, str):
        same = math.isclose(fused, alone, rel_tol=rtol, abs_tol=1e-7 if rtol else 0.0) or (
            math.isnan(fused) and math.isnan(alone)
        )
        assert same, f"{where}: fused {fused} vs alone {alone}"
    else:
        assert fused == alone, f"{where}: fused {fused!r} vs alone {alone!r}"


@pytest.mark.parametrize("group", GROUPS)
def test_members_trained_together_equal_their_runs_alone(group, tmp_path):
    configs = [compose_config(*SMALL, *member) for member in GROUPS[group]]
    plain = [dict(c) for c in configs]
    assert len(group_members(plain, 32).groups) == 1, "the members must form one group"
    alone = [train_run(c, tmp_path / f"alone{i}") for i, c in enumerate(configs)]
    fused = fused_runs(configs, [tmp_path / f"fused{i}" for i in range(len(configs))])
    for index, (one, other) in enumerate(zip(fused, alone, strict=True)):
        assert_same_numbers(one, other, f"member {index}")
        if group in EXACT:  # the same weights: every number but the logged batch losses
            assert_same_numbers(one, other, f"member {index}", 0.0, TIMES | LOGGED_LOSS)
    statuses = {m["status"] for m in alone}
    if group == "sgd family":  # the group exercises what it is meant to
        assert {"diverged", "early_stopped", "completed"} <= statuses


# ---- through the command line --------------------------------------------------------------

SWEEP = (
    "-m", *SMALL, "epochs=3", "optimizer.lr=0.003,0.01", "loss=cross_entropy,hinge",
    "early_stopping.enabled=false",
)  # fmt: skip
FUSED = "hydra/launcher=fused"


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar a run wrote: (step, value) by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _files(run_dir: Path) -> list[str]:
    return sorted(
        p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")
        if p.is_file() and "tfevents" not in p.name
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The sweep run one member after another, as Hydra's basic launcher runs it."""
    folder = tmp_path_factory.mktemp("ordinary")
    result = run_cli(*SWEEP, f"hydra.sweep.dir={folder / 'sweep'}", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "sweep"


def test_a_fused_sweep_reads_like_an_ordinary_one(reference, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(*SWEEP, FUSED, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 runs: 4 new; hydra/launcher=fused: 4 members: 1 group of 4" in result.stdout
    names = sorted(p.name for p in reference.iterdir() if p.is_dir())
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == names
    for name in names:
        ours, theirs = member_metrics(sweep)[name], member_metrics(reference)[name]
        assert_same_numbers(ours, theirs, name)
        assert_same_numbers(ours, theirs, name, 0.0, TIMES | LOGGED_LOSS)  # bit for bit
        assert _files(sweep / name) == _files(reference / name)
        assert "trainlab.log" in _files(sweep / name)
        ours, theirs = scalars(sweep / name), scalars(reference / name)
        assert ours.keys() == theirs.keys()
        for tag in theirs:
            steps = [step for step, _ in theirs[tag]]
            assert [step for step, _ in ours[tag]] == steps, tag
            if tag not in ("time/epoch_seconds", "time/steps_per_second"):
                assert_same_numbers([v for _, v in ours[tag]], [v for _, v in theirs[tag]], tag)
    hparams = [tensorboard_experiment(s) for s in (sweep, reference)]
    assert [str(h.hparam_infos) for h in hparams] == [str(hparams[1].hparam_infos)] * 2
    assert [str(h.metric_infos) for h in hparams] == [str(hparams[1].metric_infos)] * 2


def test_a_stopped_and_killed_fused_sweep_resumes_to_the_uninterrupted_numbers(reference, tmp_path):
    """Ctrl-C checkpoints every member; one member is resumed alone; the same command resumes
    the rest in a group again, is killed (SIGKILL) after a checkpoint, and finishes them when
    run once more: all end as the uninterrupted sweep."""
    sweep = tmp_path / "sweep"
    command = (*SWEEP, FUSED, f"hydra.sweep.dir={sweep}", "fused.checkpoint_seconds=0")
    stopped = run_cli(*command, cwd=tmp_path, driver={"after_batches": 4 * 5, "signal_name": "INT"})
    assert stopped.returncode == 130, stopped.stderr
    assert "the group's 4 members checkpointed" in stopped.stderr
    metrics = member_metrics(sweep)
    assert {m["status"] for m in metrics.values()} == {"interrupted"}
    assert {m["steps"] for m in metrics.values()} == {6}  # all at the same step, mid-epoch 2
    alone = sorted(metrics)[0]
    resumed = run_cli(f"resume='{sweep / alone}'", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    killed = run_cli(*command, cwd=tmp_path, driver={"after_batches": 3 * 5})  # in epoch 3
    assert killed.returncode == -signal.SIGKILL
    assert "1 done, 3 resume; hydra/launcher=fused: 3 members: 1 group of 3" in killed.stdout
    assert {member_metrics(sweep)[name]["status"] for name in metrics} == {"completed", "running"}
    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1 done, 3 resume" in again.stdout
    _assert_resumed(sweep, reference, {alone: 1})


def _assert_resumed(sweep: Path, reference: Path, times: dict[str, int]) -> None:
    """Every member ended as the uninterrupted sweep's members did, resumed ``times`` (by
    name; 2 for the others)."""
    for name, theirs in member_metrics(reference).items():
        ours = member_metrics(sweep)[name]
        assert ours["resumes"] == times.get(name, 2), name
        assert_same_numbers({**ours, "resumes": 0}, theirs, name)


def test_a_member_that_cannot_start_fails_alone_and_the_group_goes_on(tmp_path):
    from trainlab.errors import UserError

    configs = [compose_config(*SMALL, f"optimizer.lr={lr}") for lr in (0.01, -1.0, 0.02)]
    outcomes = fused_runs(configs, [tmp_path / f"m{i}" for i in range(3)])
    assert isinstance(outcomes[1], UserError)
    assert "optimizer.lr" in str(outcomes[1])
    recorded = member_metrics(tmp_path / "m1")["m1"]  # as a sweep member that failed to start
    assert recorded["status"] == "failed" and "optimizer.lr" in recorded["error"]
    assert sorted(p.name for p in (tmp_path / "m1").iterdir()) == ["metrics.json"]
    assert {outcomes[0]["status"], outcomes[2]["status"]} <= {"completed", "early_stopped"}


def test_a_failure_in_the_shared_fit_ends_every_member_resumably(tmp_path, monkeypatch):
    """An error inside the group's step (a bug, or the user's code) fails each member as a run
    that failed: its metrics.json says so, and its checkpoint lets the same sweep resume it."""
    from trainlab.fused_engine import StackedModels

    step, calls = StackedModels.step, []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 8:  # in epoch 2: every member has its epoch-1 checkpoint
            raise RuntimeError("a bug in the middle of a step")
        return step(self, *args)

    monkeypatch.setattr(StackedModels, "step", failing)
    configs = [compose_config(*SMALL, f"optimizer.lr={lr}", "fused.checkpoint_seconds=0")
               for lr in (0.01, 0.02)]  # fmt: skip
    outcomes = fused_runs(configs, [tmp_path / f"m{i}" for i in range(2)])
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    for index in range(2):
        metrics = member_metrics(tmp_path / f"m{index}")[f"m{index}"]
        assert metrics["status"] == "failed" and metrics["resumable"] is True
        assert "a bug in the middle of a step" in metrics["error"]


def test_members_group_by_what_shapes_a_step_and_the_rest_run_alone():
    def plain(*overrides: str) -> dict:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(compose_config(*overrides), resolve=True)

    configs = [
        plain("optimizer.lr=0.1"), plain("optimizer=adamw", "seed=3", "loss=hinge"),
        plain("optimizer=sgd"), plain("optimizer=nesterov", "schedule=cosine", "epochs=5"),
        plain("dataset.features=4"),  # other data: its own group (of one: alone)
        plain("optimizer=lbfgs"), plain("optimizer=rmsprop"), plain("model.dropout=0.1"),
        plain("mode=lr_find"), plain("accumulate_steps=2"), plain("optimizer.lr=0.2"),
        plain("model=cnn", "model.batch_norm=false"),
    ]  # fmt: skip
    grouping = group_members(configs, max_members=32, skipped=[10])
    assert grouping.groups == [[0, 1], [2, 3]]
    assert grouping.alone == {
        4: "nothing to group with", 5: "optimizer=lbfgs", 6: "optimizer=rmsprop",
        7: "dropout", 8: "mode=lr_find",
        9: "accumulate_steps > 1", 11: "model=cnn",
    }  # fmt: skip
    assert grouping.describe().startswith("11 members: 2 groups of 2, 7 alone: optimizer=lbfgs, ")
    chunked = group_members([configs[0]] * 5, max_members=2)
    assert chunked.groups == [[0, 1], [2, 3]] and chunked.alone == {4: "nothing to group with"}
    assert chunked.describe() == "5 members: 2 groups of 2, 1 alone: nothing to group with"
