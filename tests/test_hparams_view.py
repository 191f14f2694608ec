"""TensorBoard's HParams columns for a folder of runs: the results, and what differs."""

from __future__ import annotations

from tensorboard.plugins.hparams import api_pb2

from tests.helpers import tensorboard_experiment
from trainlab.hparams_view import VIEW_FILE, hparam_infos, metric_tags, write_view
from trainlab.tfrecord import crc32c, frame, masked_crc32c

GROUP_CHOICES = {
    "dataset": "synthetic", "model": "mlp", "loss": "mse", "optimizer": "adam",
    "schedule": "constant", "regularizer": "none",
}  # fmt: skip


def result(lr: float, seed: int, loss: str = "mse", status: str = "completed") -> dict:
    hparams = {**GROUP_CHOICES, "loss": loss, "optimizer.lr": lr, "seed": seed}
    hparams.update({"batch_size": 64, "epochs": 5, "task": "regression"})  # constants
    return {
        "status": status,
        "primary_metric": "mse",
        "hparams": hparams,
        "val": {"loss": 1.0, "mse": 1.0, "mae": 0.5},
        "test": {"loss": 1.1, "mse": 1.1, "mae": 0.6},
        "best_val_loss": 0.9,
        "epochs_run": 5,
    }


def test_columns_are_the_group_choices_and_what_differs_once_each():
    runs = [result(lr, seed, loss) for lr in (1e-3, 1e-2) for seed in (0, 1) for loss in "ab"]
    infos = {info.name: info for info in hparam_infos(runs)}
    assert set(infos) == {*GROUP_CHOICES, "optimizer.lr", "seed"}  # no batch_size, epochs, task
    assert [name for name, info in infos.items() if info.differs] == [
        "loss",
        "optimizer.lr",
        "seed",
    ]
    assert infos["optimizer.lr"].type == api_pb2.DATA_TYPE_FLOAT64
    assert infos["loss"].type == api_pb2.DATA_TYPE_STRING
    assert sorted(v.string_value for v in infos["loss"].domain_discrete.values) == ["a", "b"]


def test_keys_that_make_no_other_experiment_are_no_columns():
    runs = [result(1e-3, 0), result(1e-3, 0)]
    runs[0]["hparams"]["cpu_threads"], runs[1]["hparams"]["cpu_threads"] = 1, 2
    assert "cpu_threads" not in {info.name for info in hparam_infos(runs)}


def test_a_key_only_some_runs_have_differs():
    runs = [result(1e-3, 0), result(1e-3, 0)]
    runs[1]["hparams"]["regularizer.strength"] = 0.1
    infos = {info.name: info for info in hparam_infos(runs)}
    assert infos["regularizer.strength"].differs


def test_metrics_put_the_primary_metric_first_and_skip_unfinished_runs():
    assert metric_tags([result(1e-3, 0)]) == [
        "final/val_mse", "final/test_mse", "final/best_val_loss", "final/epochs_run",
        "final/val_loss", "final/test_loss", "final/val_mae", "final/test_mae",
    ]  # fmt: skip
    interrupted = {**result(1e-3, 0, status="interrupted"), "val": {"odd": 1.0}}
    assert "final/val_odd" not in metric_tags([interrupted, result(1e-3, 1)])


def test_tensorboard_reads_the_view_it_is_given(tmp_path):
    assert write_view(tmp_path, [{"status": "failed"}]) is None  # nothing to show yet
    assert write_view(tmp_path, [result(1e-3, 0), result(1e-2, 0)]) == tmp_path / VIEW_FILE
    experiment = tensorboard_experiment(tmp_path)
    assert [info.name for info in experiment.hparam_infos if info.differs] == ["optimizer.lr"]
    assert [info.name.tag for info in experiment.metric_infos][:2] == [
        "final/val_mse", "final/test_mse"
    ]  # fmt: skip
    write_view(tmp_path, [result(1e-3, 0), result(1e-3, 1)])  # replaced whole, one file
    assert [path.name for path in tmp_path.iterdir()] == [VIEW_FILE]
    experiment = tensorboard_experiment(tmp_path)
    assert [info.name for info in experiment.hparam_infos if info.differs] == ["seed"]


def test_tfrecord_checksums_are_crc32c_as_tensorflow_masks_them():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert masked_crc32c(b"") == 0xA282EAD8  # TFRecord's mask of crc32c(b"") == 0
    record = frame(b"payload")
    assert len(record) == 8 + 4 + 7 + 4 and record[12:19] == b"payload"


def test_the_view_of_the_folder_tensorboard_opens_wins_over_its_sweeps_views(tmp_path):
    """trainlab-report on a folder of several sweeps writes the view TensorBoard, opened on
    that folder, uses (it reads the folder itself before the folders below it)."""
    write_view(tmp_path / "sweep-a", [result(1e-3, 0), result(1e-2, 0)])  # lr differs
    write_view(tmp_path / "sweep-b", [result(1e-3, 0), result(1e-3, 1)])  # seed differs
    write_view(tmp_path, [result(1e-3, 0), result(1e-2, 0), result(1e-3, 1)])
    experiment = tensorboard_experiment(tmp_path)
    differs = [info.name for info in experiment.hparam_infos if info.differs]
    assert differs == ["optimizer.lr", "seed"]
