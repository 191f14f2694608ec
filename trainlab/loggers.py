"""Where a run's numbers go: TensorBoard event files and the rich console.

(Named ``loggers`` rather than ``logging`` so it never shadows the standard library module.)
"""

from __future__ import annotations

import functools
import logging
import shutil
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from trainlab.config_keys import GROUPS, LAUNCHER_KEYS, override_key
from trainlab.data import DatasetSpec
from trainlab.engine import Callback, FitResult
from trainlab.files import atomic_write
from trainlab.optim import TrainingPlan
from trainlab.tfrecord import masked_crc32c

log = logging.getLogger("trainlab")
T = TypeVar("T")


def swept_values(config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The keys set on the command line with their typed values, so sweeps compare by them.

    A group override (``loss=huber``) gives the option's name.
    """
    swept: dict[str, Any] = {}
    for override in overrides:
        key = override_key(override)
        if key.startswith("hydra.") or "=" not in override or key.split(".")[0] in LAUNCHER_KEYS:
            continue
        value = OmegaConf.select(config, key, default=None)
        if value is None:  # not a config key (+experiment=NAME selects a preset)
            continue
        if isinstance(value, DictConfig):
            value = value.get("name")
        elif isinstance(value, ListConfig):
            value = str(list(value))
        swept[key] = value
    return swept


def hparams_of(
    config: DictConfig, spec: DatasetSpec, batch_size: int, overrides: list[str]
) -> dict[str, Any]:
    """The numbers and choices a sweep compares runs by (HParams dashboard columns)."""
    values: dict[str, Any] = {group: config[group]["name"] for group in GROUPS}
    values.update(
        {
            "task": spec.task,
            # The lr under the key a sweep sets it by: one column, not lr and optimizer.lr.
            "optimizer.lr": config.optimizer.get("lr", 0.0),
            "batch_size": batch_size,
            "epochs": config.epochs,
            "seed": config.seed,
        }
    )
    values.update(swept_values(config, overrides))
    return {
        key: value if isinstance(value, bool | int | float | str) else str(value)
        for key, value in values.items()
    }  # TensorBoard takes only these types (None becomes "None")


def _quiet_writer_threads() -> None:
    """TensorBoard's writer thread hands an error writing the event file (a full disk) to the
    run's next write, which reports it in one line; Python would also print it, with a
    traceback, as the thread ends."""
    default = threading.excepthook
    if getattr(default, "trainlab", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == _WRITER):
            default(args)

    hook.trainlab = True  # type: ignore[attr-defined]
    threading.excepthook = hook


_WRITER = "_AsyncWriterThread"  # tensorboard.summary.writer.event_file_writer's


def _names_the_event_file(method: Callable[..., T]) -> Callable[..., T]:
    """An error from the writer names the event file (the thread's error names none)."""

    @functools.wraps(method)
    def named(self: TensorBoardLogger, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except OSError as error:
            if error.filename is None:
                files = sorted(self.run_dir.glob("events.out.tfevents.*"))
                error.filename = str(files[-1] if files else self.run_dir)
            raise

    return named


class TensorBoardLogger(Callback):
    """Scalars per logging interval (``train/*``) and per epoch (``epoch/*``), plus hparams.

    Events go straight into the run directory, so TensorBoard names each run after its folder
    (for sweep members, the readable override string). A resumed run first drops whatever
    was logged after its checkpoint, so no step is duplicated or missing.
    """

    @_names_the_event_file
    def __init__(
        self, run_dir: Path, hparams: Mapping[str, Any], resume_at: tuple[int, int] | None = None
    ) -> None:
        self.run_dir = run_dir
        if resume_at is not None:
            trim_events(run_dir, *resume_at)
        _quiet_writer_threads()
        self.writer = SummaryWriter(log_dir=str(run_dir))
        # Only the session summaries, no experiment summary: TensorBoard then builds the
        # experiment from every run it sees, so the hparams that differ across a sweep are
        # flagged as such and every scalar can be a metric column. Written at the start, so the
        # HParams dashboard lists the run while it trains (a resumed run kept its own).
        _, start, self._end = hparams_summaries(dict(hparams), {})
        if resume_at is None:
            self.writer.file_writer.add_summary(start)

    @_names_the_event_file
    def flush(self) -> None:
        self.writer.flush()

    @_names_the_event_file
    def on_log(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    @_names_the_event_file
    def on_epoch_end(self, epoch: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            if name not in ("epoch", "step"):
                self.writer.add_scalar(f"epoch/{name}", value, epoch)

    @_names_the_event_file
    def write_probe_point(self, step: int, lr: float, loss: float, smoothed: float) -> None:
        """One step of a learning-rate range test (mode=lr_find)."""
        self.writer.add_scalar("lr_find/lr", lr, step)
        self.writer.add_scalar("lr_find/loss", loss, step)
        self.writer.add_scalar("lr_find/smoothed_loss", smoothed, step)

    @_names_the_event_file
    def write_final(self, metrics: Mapping[str, float], step: int) -> None:
        """Final numbers as ``final/*`` scalars (the HParams dashboard's metric columns), at
        the run's last step, where the curves end."""
        for name, value in metrics.items():
            self.writer.add_scalar(f"final/{name}", value, step)
        self.writer.file_writer.add_summary(self._end)

    @_names_the_event_file
    def close(self) -> None:
        self.writer.close()


class NullLogger(Callback):
    """Where the events of a data-parallel run's other processes go: nowhere."""

    def flush(self) -> None: ...
    def write_probe_point(self, step: int, lr: float, loss: float, smoothed: float) -> None: ...
    def write_final(self, metrics: Mapping[str, float], step: int) -> None: ...
    def close(self) -> None: ...


def _keep_event(event: event_pb2.Event, step: int, epochs: int) -> bool:
    """Whether an event logged before a kill belongs to the run as checkpointed."""
    if not event.HasField("summary") or not event.summary.value:
        return True  # session logs and other bookkeeping
    tag = event.summary.value[0].tag
    if tag.startswith("train/"):
        return event.step <= step
    if tag.startswith("epoch/"):
        return event.step <= epochs
    return not (tag.startswith("final/") or tag == "_hparams_/session_end_info")


class EventRecords(NamedTuple):
    """What of an event file can be read: its whole records, and what could not be."""

    records: list[bytes]
    damaged: int  # bytes in records whose checksums fail, or after a length that cannot be read
    cut_short: int  # bytes of a last record a kill cut short


def read_records(path: Path) -> EventRecords:
    """The whole records of a TensorBoard event file (TFRecord framing, CRCs checked). A record
    whose payload fails its checksum is skipped; a damaged length ends the reading (nothing
    after it can be found)."""
    data, records, offset, damaged = path.read_bytes(), [], 0, 0
    while offset < len(data):
        header = data[offset : offset + 8]
        if offset + 12 > len(data):
            return EventRecords(records, damaged, len(data) - offset)
        if struct.unpack("<I", data[offset + 8 : offset + 12])[0] != masked_crc32c(header):
            return EventRecords(records, damaged + len(data) - offset, 0)
        end = offset + 12 + struct.unpack("<Q", header)[0] + 4
        if end > len(data):
            return EventRecords(records, damaged, len(data) - offset)
        payload = data[offset + 12 : end - 4]
        if struct.unpack("<I", data[end - 4 : end])[0] == masked_crc32c(payload):
            records.append(payload)
        else:
            damaged += end - offset
        offset = end
    return EventRecords(records, damaged, 0)


def _kept_records(paths: list[Path], step: int, epochs: int) -> Iterator[bytes]:
    seen: set[bytes] = set()  # a kill between the rewrite and the unlinks below leaves copies
    for index, path in enumerate(paths):
        records, damaged, _ = read_records(path)  # an event a kill cut short: never written
        if damaged:
            copy = path.with_name(path.name.replace("tfevents", "damaged"))  # TensorBoard skips it
            shutil.copyfile(path, copy)
            log.warning(
                "%s is damaged: %d of its %d bytes cannot be read (a damaged disk?), and the "
                "events in them are missing from the run's TensorBoard record; the file as it "
                "was is kept as %s",
                path, damaged, path.stat().st_size, copy.name,
            )  # fmt: skip
        for raw in records:
            event = event_pb2.Event.FromString(raw)
            if event.HasField("file_version"):
                keep = index == 0
            else:
                keep = raw not in seen and _keep_event(event, step, epochs)
            if keep:
                seen.add(raw)
                yield raw


def trim_events(run_dir: Path, step: int, epochs: int) -> None:
    """Merge the run's event files into one that ends at ``step`` (``epochs`` finished).

    TensorBoard's own purge works on one step axis, but ``epoch/*`` counts epochs: so the
    events are filtered here, by tag, and the file replaced atomically. A damaged file is
    said, with what of it is lost, and kept as it was.
    """
    paths = sorted(run_dir.glob("events.out.tfevents.*"))
    if not paths:
        return
    records = list(_kept_records(paths, step, epochs))

    def write(file) -> None:
        writer = RecordWriter(file)
        for raw in records:
            writer.write(raw)

    atomic_write(paths[0], write)
    for path in paths[1:]:
        path.unlink()


class ConsoleLogger(Callback):
    """A rich progress bar (elapsed time and ETA) with the live training loss and the latest
    validation loss and primary metric, which stay shown until the next evaluation; then a
    one-run summary table."""

    def __init__(self, console: Console, title: str, primary_metric: str = "") -> None:
        self.console = console
        self.title = title
        self.primary_metric = primary_metric
        self.validation = ""  # the latest evaluation, shown between evaluations
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = None

    def on_fit_start(self, plan: TrainingPlan) -> None:
        self.progress.start()
        self.task = self.progress.add_task(self.title, total=plan.total_steps, status="")
        self.plan = plan

    def on_log(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        status = f"epoch {epoch}/{self.plan.epochs}  loss {scalars['loss']:.4g}{self.validation}"
        self.progress.update(self.task, completed=step, status=status)

    def on_epoch_end(self, epoch: int, scalars: dict[str, float]) -> None:
        if "val_loss" in scalars:
            self.validation = f"  val_loss {scalars['val_loss']:.4g}"
            primary = f"val_{self.primary_metric}"
            if primary in scalars and primary != "val_loss":
                self.validation += f"  {primary} {scalars[primary]:.4g}"
        status = (
            f"epoch {epoch}/{self.plan.epochs}  loss {scalars['train_loss']:.4g}{self.validation}"
        )
        self.progress.update(self.task, completed=scalars["step"], status=status)

    def on_fit_end(self, result: FitResult | None) -> None:
        self.progress.stop()  # idempotent

    def probe_summary(self, metrics: Mapping[str, Any], run_dir: Path) -> None:
        """A learning-rate range test's suggestion, and the command that trains with it."""
        self.console.print(f"[bold]{self.title}[/bold]: lr range test, {metrics['message']}")
        if metrics["suggested_lr"] is None:
            self.console.print("no suggestion: no step gave a finite loss; lower lr_find.min_lr")
            return
        self.console.print(
            f"suggested lr [bold]{metrics['suggested_lr']:.3g}[/bold] ({metrics['rule']}); "
            f"curve in {run_dir / 'lr_find.png'}\ntrain with it: {metrics['command']}",
            soft_wrap=True,
        )

    def summary(self, metrics: Mapping[str, Any], run_dir: Path) -> None:
        """Print the run's outcome and final numbers."""
        self.console.print(f"[bold]{self.title}[/bold]: {metrics['status']}", soft_wrap=True)
        table = Table(show_header=True)
        table.add_column("split")
        names = [name for name in metrics.get("metric_names", [])]
        for name in names:
            table.add_column(name, justify="right")
        for split in ("val", "test"):
            values = metrics.get(split) or {}
            table.add_row(
                split, *(f"{values[name]:.4f}" if name in values else "-" for name in names)
            )
        self.console.print(table)
        self.console.print(
            f"epochs {metrics['epochs_run']} (best {metrics['best_epoch'] or '-'}), "
            f"steps {metrics['steps']}, {metrics['wall_time_s']:.1f}s, run dir {run_dir}",
            soft_wrap=True,
        )
