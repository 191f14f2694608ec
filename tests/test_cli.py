"""The real ``trainlab`` command in a subprocess: single runs, sweeps, TensorBoard files read
back, help, and the bad-input cases."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.helpers import TINY, member_metrics, run_cli, start_cli, tensorboard_experiment
from tests.image_files import write_idx_dataset
from trainlab.config_keys import GROUPS

EXPECTED_TAGS = {
    "train/loss",
    "train/penalty",
    "train/lr",
    "train/grad_norm",
    "epoch/train_loss",
    "epoch/train_penalty",
    "epoch/lr",
    "epoch/val_loss",
    "epoch/val_accuracy",
    "final/test_loss",
    "final/test_accuracy",
    "final/val_loss",
    "final/val_accuracy",
    "final/best_val_loss",
    "final/epochs_run",
}


def read_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events


def session_hparams(events: EventAccumulator) -> dict:
    raw = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(raw).session_start_info
    return {
        key: value.string_value or value.number_value or value.bool_value
        for key, value in start.hparams.items()
    }


def test_single_run_writes_metrics_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "loss=huber",
        "optimizer=adam",
        "regularizer=l2",
        "log_every_steps=10",
        *TINY,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 3
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "trainlab.log").exists()

    events = read_events(run_dir)
    assert set(events.Tags()["scalars"]) >= EXPECTED_TAGS
    steps = metrics["steps"]
    assert [e.step for e in events.Scalars("train/loss")] == list(range(10, steps + 1, 10))
    assert [e.step for e in events.Scalars("epoch/val_loss")] == [1, 2, 3]
    assert events.Scalars("epoch/val_loss")[-1].value == pytest.approx(
        metrics["history"]["val_loss"][-1]
    )
    assert all(
        e.value > 0 for e in events.Scalars("train/penalty")
    )  # l2 logged apart from the loss
    assert events.Scalars("final/test_accuracy")[0].step == metrics["steps"]  # where curves end
    assert events.Scalars("final/test_accuracy")[0].value == pytest.approx(
        metrics["test"]["accuracy"]
    )
    hparams = session_hparams(events)
    assert (
        hparams["loss"] == "huber"
        and hparams["optimizer"] == "adam"
        and hparams["regularizer"] == "l2"
    )
    assert hparams["optimizer.lr"] == pytest.approx(0.003) and hparams["epochs"] == 3
    assert "lr" not in hparams  # one column for the lr, under the key a sweep sets
    assert "Traceback" not in result.stderr
    assert "completed" in result.stdout


def test_multirun_2x2_has_readable_run_names_and_comparable_hparams(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "loss=mse,huber",
        "optimizer.lr=0.001,0.01",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    # Named after the keys that vary in the sweep, sorted, as key=value joined by commas; the
    # constants (dataset sizes, epochs) stay in the config and the hparams.
    assert names == sorted(
        f"loss={loss},optimizer.lr={lr}" for loss in ("huber", "mse") for lr in ("0.001", "0.01")
    )
    for name in names:
        run_dir = sweep / name
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        provenance = json.loads((run_dir / "provenance.json").read_text())
        assert not any("exclude_keys" in arg for arg in provenance["command"])  # as typed
        hparams = session_hparams(read_events(run_dir))
        assert hparams["epochs"] == 3
        assert hparams["loss"] == name.split("loss=")[1].split(",")[0]
        assert hparams["optimizer.lr"] == pytest.approx(
            float(name.split("optimizer.lr=")[1].split(",")[0])
        )
    assert "sweep" in result.stdout and result.stdout.count("completed") >= 4
    # HParams, as TensorBoard's backend reads the folder: the group choices and the swept keys
    # once each (swept first, which the dashboard ticks), the final numbers as metric columns.
    experiment = tensorboard_experiment(sweep)
    columns = [(info.name, info.differs) for info in experiment.hparam_infos]
    assert columns[:2] == [("loss", True), ("optimizer.lr", True)]
    assert {name for name, _ in columns} == {*GROUPS, "optimizer.lr"}
    metrics = [info.name.tag for info in experiment.metric_infos]
    assert metrics[:4] == [
        "final/val_accuracy", "final/test_accuracy", "final/best_val_loss", "final/epochs_run"
    ]  # fmt: skip
    assert all(tag.startswith("final/") for tag in metrics)


def test_preflight_refuses_a_sweep_with_one_bad_member_before_any_runs(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "loss=hinge,mae",
        "dataset.task=regression",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert not sweep.exists()  # not even the good member ran
    assert "loss=hinge does not fit the regression task" in result.stderr
    assert "1 of 2 sweep members are invalid" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_a_member_failing_at_run_time_does_not_stop_the_sweep(tmp_path):
    """Missing files show only when a member loads them: that member fails, the others run."""
    write_idx_dataset(tmp_path / "data" / "MNIST" / "raw", train=300, test=100, gzipped=False)
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "dataset=mnist",
        f"dataset.root={tmp_path / 'data'},{tmp_path / 'empty'}",
        "dataset.download=false",
        "dataset.val_size=100",
        "model=linear",
        "epochs=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    statuses = {
        name.split("dataset.root=")[1].split(",")[0].rsplit("_", 1)[-1]: metrics["status"]
        for name, metrics in member_metrics(sweep).items()
    }
    assert statuses == {"empty": "failed", "data": "completed"}
    assert "1 of 2 runs failed" in result.stdout


def test_a_diverging_member_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "optimizer=sgd",
        "loss=mse",
        "optimizer.lr=0.01,1e6",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    statuses = {name: metrics["status"] for name, metrics in member_metrics(sweep).items()}
    assert sorted(statuses.values()) == ["completed", "diverged"], statuses


def test_help_lists_every_group_and_option(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    conf = Path(__file__).resolve().parent.parent / "conf"
    for group in ("dataset", "model", "loss", "optimizer", "schedule", "regularizer"):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"{group}:"))
        assert set(line.split(":", 1)[1].replace(",", " ").split()) == {
            p.stem for p in (conf / group).glob("*.yaml")
        }
    # What needs the sweep extra is marked, with how to install it.
    assert "optuna_search*" in result.stdout and "joblib*, " in result.stdout
    assert "* needs the sweep extra: pip install -e '.[sweep]'" in result.stdout


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = run_cli("--cfg", "job", "loss=huber", "loss.delta=2.5", cwd=tmp_path)
    assert result.returncode == 0
    assert "name: huber" in result.stdout and "delta: 2.5" in result.stdout
    assert not (tmp_path / "outputs").exists()


def test_help_and_cfg_job_import_no_torch(tmp_path):
    """They answer in under a second because they never import torch (a fresh interpreter)."""
    script = (
        "import sys\n"
        "from trainlab.cli import main\n"
        "for argv in (['--help'], ['--cfg', 'job', 'loss=mse']):\n"
        "    sys.argv = ['trainlab', *argv]\n"
        "    main()\n"
        "print('imported:', sorted(m for m in ('torch', 'tensorboard') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "name: mse" in result.stdout and "imported: []" in result.stdout


def test_the_same_command_twice_gives_the_same_metrics(tmp_path):
    results = []
    for name in ("first", "second"):
        run_dir = tmp_path / name
        result = run_cli("model.dropout=0.1", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        results.append(json.loads((run_dir / "metrics.json").read_text()))
    first, second = results
    for key in ("history", "val", "test", "steps", "best_epoch"):
        assert first[key] == second[key], key


@pytest.mark.parametrize(
    "signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_an_interrupted_run_is_marked_and_exits_without_traceback(signal_number, tmp_path):
    run_dir = tmp_path / "run"
    process = start_cli(
        "epochs=100000", "early_stopping.enabled=false", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    metrics_path = run_dir / "metrics.json"
    deadline = time.monotonic() + 60
    while not (metrics_path.exists() and "running" in metrics_path.read_text()):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    time.sleep(0.5)  # inside the training loop
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stdout + stderr
    name = signal.Signals(signal_number).name
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"trainlab: interrupted by {name}: stopped after ")
    assert line.endswith(f"continue it with: trainlab resume={run_dir}")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["status"] == "interrupted" and metrics["steps"] >= 1
    assert (run_dir / "checkpoint.pt").is_file()
    assert "interrupted: stopped after" in (run_dir / "trainlab.log").read_text()
