"""The HParams dashboard's columns for a folder of runs, written as TensorBoard's experiment
summary so that the dashboard shows the results rather than guessing.

Without one, TensorBoard takes every scalar of every run as a metric column (sorted by name,
so the per-epoch series come first) and ticks the first hparams whatever they are. The
experiment written here lists as hparams the config groups' choices plus every key whose value
differs between the runs, flagged as differing (TensorBoard ticks those first), and as metrics
the runs' final numbers: the task's primary metric on validation and test first (TensorBoard
ticks the first five), then the best validation loss and the epochs run. The per-step and
per-epoch series stay in the Scalars and Time Series dashboards.

The summary goes in a file of its own in the folder (TensorBoard's run "."), replaced whole
each time; the sweep writes it when it ends and ``trainlab-report`` when it reads the folder.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from trainlab.config_keys import GROUPS, runtime_only
from trainlab.files import atomic_write
from trainlab.tfrecord import frame

if TYPE_CHECKING:  # the protobuf modules are imported when a view is written
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2

# "tfevents" in the name makes TensorBoard read it; nothing else writes a file of this name.
VIEW_FILE = "events.out.tfevents.0.trainlab-hparams"
Results = Mapping[str, Any]  # a run's metrics.json


def hparam_infos(runs: Sequence[Results]) -> list[api_pb2.HParamInfo]:
    """The config groups' choices, then every hparam whose value differs between the runs
    (not the runtime-only keys, such as cpu_threads: they make no other experiment)."""

    keys = dict.fromkeys(key for run in runs for key in run.get("hparams") or {})
    values: dict[str, list[Any]] = {key: [] for key in keys}
    for run in runs:
        hparams = run.get("hparams") or {}
        for key, seen in values.items():
            seen.append(hparams.get(key))
    infos = []
    for key, seen in values.items():
        differs = len({repr(value) for value in seen}) > 1
        if key in GROUPS or (differs and not runtime_only(key)):
            infos.append(_hparam_info(key, [value for value in seen if value is not None], differs))
    return infos


def _hparam_info(key: str, values: list[Any], differs: bool) -> api_pb2.HParamInfo:
    from tensorboard.plugins.hparams import api_pb2

    info = api_pb2.HParamInfo(name=key, differs=differs)
    if values and all(isinstance(v, bool) for v in values):
        info.type = api_pb2.DATA_TYPE_BOOL
    elif values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        info.type = api_pb2.DATA_TYPE_FLOAT64
    else:
        info.type = api_pb2.DATA_TYPE_STRING
        info.domain_discrete.extend(sorted({str(value) for value in values}))
    return info


def metric_tags(runs: Sequence[Results]) -> list[str]:
    """The ``final/*`` scalars the runs wrote, the ones a person compares first."""
    written: list[str] = []
    for run in runs:
        if run.get("status") in ("interrupted", "running", None):
            continue  # no final numbers yet
        final = [f"val_{name}" for name in run.get("val") or {}]
        final += [f"test_{name}" for name in run.get("test") or {}]
        final += ["best_val_loss"] if run.get("best_val_loss") is not None else []
        written += [name for name in [*final, "epochs_run"] if name not in written]
    primaries = dict.fromkeys(run["primary_metric"] for run in runs if run.get("primary_metric"))
    first = [f"{split}_{name}" for name in primaries for split in ("val", "test")]
    first += ["best_val_loss", "epochs_run", "val_loss", "test_loss"]
    ordered = [name for name in first if name in written]
    return [f"final/{name}" for name in ordered + [n for n in written if n not in ordered]]


def experiment_summary(runs: Sequence[Results]) -> Summary:
    """TensorBoard's ``_hparams_/experiment`` summary for these runs."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    experiment = api_pb2.Experiment(
        name="trainlab",
        time_created_secs=time.time(),
        hparam_infos=hparam_infos(runs),
        metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags(runs)
        ],
    )
    content = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=0)
    plugin = SummaryMetadata.PluginData(plugin_name="hparams", content=content.SerializeToString())
    meta = SummaryMetadata(plugin_data=plugin)
    return Summary(value=[Summary.Value(tag="_hparams_/experiment", metadata=meta)])


def write_view(folder: Path, runs: Sequence[Results]) -> Path | None:
    """Write the HParams view of ``runs`` into ``folder``; None (nothing written) when no run
    has hparams yet. Learning-rate probes (mode=lr_find) have no results to compare."""
    runs = [run for run in runs if run.get("kind") != "lr_find"]
    if not any(run.get("hparams") for run in runs):
        return None
    from tensorboard.compat.proto.event_pb2 import Event

    event = Event(wall_time=time.time(), step=0, summary=experiment_summary(runs))

    def write(file: IO[bytes]) -> None:
        file.write(frame(event.SerializeToString()))

    path = folder / VIEW_FILE
    atomic_write(path, write)
    return path
