"""The ``trainlab`` command: Hydra composes the config, trainlab validates and runs it.

A mistake the user can fix ends as one line on stderr and a non-zero exit; in a sweep the
failing member is recorded in its metrics.json and the other members still run.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainlab.distributed import (
    Processes,
    SharedError,
    agreed,
    broadcast,
    export_submitit_tasks,
    from_environment,
    join,
    leave,
    process_group,
    wait_for_all,
    was_agreed,
)
from trainlab.errors import UserError, as_user_error
from trainlab.files import OutputError, read_json, write_json
from trainlab.gpu_slots import SLOTS_FOLDER, claim_gpu
from trainlab.interrupts import GracefulStop
from trainlab.loggers import make_console
from trainlab.preflight import explain
from trainlab.resume import (
    clear_attempt,
    differences,
    plan_run,
    saved_config,
)
from trainlab.run import check_complete, run
from trainlab.sweep import preflight, sweep_members, task_config

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C
log = logging.getLogger("trainlab")


def run_name(override_dirname: str, job_number: int) -> str:
    """A sweep member's folder name: its overrides (``loss=huber,optimizer.lr=0.01``)."""
    name = override_dirname.replace(os.sep, "_") or f"run{job_number}"
    return name if len(name) <= 200 else f"{name[:180]}...#{job_number}"


OmegaConf.register_new_resolver("trainlab_run_name", run_name, replace=True)


def _swept(config: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The keys set on the command line with their typed values, so sweeps compare by them.

    A group override (``loss=huber``) gives the option's name.
    """
    swept: dict[str, Any] = {}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.") or "=" not in override:
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


def _run_dir_resolver(resume: str | None, default: str) -> str:
    """hydra.run.dir: the folder being resumed, else a new timestamped one."""
    return str(resume) if resume else default


OmegaConf.register_new_resolver("trainlab_run_dir", _run_dir_resolver, replace=True)


def _gpu_jobs(members_per_gpu: int) -> int:
    """hydra/launcher=gpus: members at once, ``members_per_gpu`` on each GPU (one on a CPU)."""
    import torch

    return max(1, torch.cuda.device_count()) * int(members_per_gpu)


OmegaConf.register_new_resolver("trainlab_gpu_jobs", _gpu_jobs, replace=True)


GPU_LAUNCHER = "gpus"  # conf/hydra/launcher/gpus.yaml


@contextlib.contextmanager
def _gpu_for_member(config: DictConfig, hydra_config: DictConfig) -> Iterator[None]:
    """Under hydra/launcher=gpus, a member holds a slot on one GPU while it runs (device=auto).

    Other launchers place members themselves (SLURM gives each job its GPUs), and their
    members may share a sweep folder across nodes, where the slot files would not mean one GPU.
    """
    import torch

    chosen = hydra_config.runtime.choices.get("hydra/launcher") == GPU_LAUNCHER
    count = torch.cuda.device_count() if chosen and config.get("device") == "auto" else 0
    if count == 0:
        yield
        return
    with claim_gpu(
        Path(hydra_config.sweep.dir) / SLOTS_FOLDER, count, config.members_per_gpu
    ) as gpu:
        torch.cuda.set_device(gpu)  # device=auto now means this GPU; the config is unchanged
        log.info("running on GPU %d", gpu)
        yield


def _objective(metrics: dict[str, Any]) -> float | None:
    """What a search sweeper (Optuna) optimizes: the validation value, never the test one.

    A diverged run is a failed trial (None; Optuna's sweeper chokes on NaN), whatever its best
    weights scored.
    """
    value = (metrics.get("val") or {}).get(metrics.get("primary_metric", ""))
    return value if metrics.get("status") in ("completed", "early_stopped") else None


class _DeferredLogFile:
    """Holds the records meant for the run folder's log until the run starts, so a refused
    command writes nothing there (a finished run's log included)."""

    def __init__(self) -> None:
        self.root = logging.getLogger()
        self.held: list[tuple[logging.handlers.MemoryHandler, logging.Handler]] = []
        for handler in list(self.root.handlers):
            if isinstance(handler, logging.FileHandler):
                memory = logging.handlers.MemoryHandler(
                    10**6, flushLevel=logging.CRITICAL + 1, target=handler, flushOnClose=False
                )
                self.root.removeHandler(handler)
                self.root.addHandler(memory)
                self.held.append((memory, handler))

    def release(self) -> None:
        """The run has started: write what was held, then log straight to the file."""
        self._restore(write=True)

    def discard(self) -> None:
        self._restore(write=False)

    def drop(self) -> None:
        """Never write to the run's log (a data-parallel run's other processes: process 0's)."""
        for memory, handler in self.held:
            self.root.removeHandler(memory)
            handler.close()
        self.held = []

    def _restore(self, write: bool) -> None:
        for memory, handler in self.held:
            if write:
                memory.flush()
            memory.buffer.clear()
            self.root.removeHandler(memory)
            self.root.addHandler(handler)
        self.held = []


def _resume_hint(
    run_dir: Path, multirun: bool, hydra_config: DictConfig, processes: Processes
) -> str:
    """How to continue this run if it is stopped: the command to type."""
    if multirun:
        return f"run the same sweep command again with hydra.sweep.dir={hydra_config.sweep.dir}"
    if processes.parallel:
        return (
            f"continue it with: torchrun --nproc-per-node={processes.world} -m trainlab "
            f"resume={run_dir}"
        )
    return f"continue it with: trainlab resume={run_dir}"


def _plan_on_process_zero(
    config: DictConfig, run_dir: Path, overrides: list[str], multirun: bool, processes: Processes
) -> tuple[str, DictConfig]:
    """plan_run, with a failed attempt cleared for a rerun: decided by process 0 alone (the
    others would see its files appear), then shared; a refusal there ends every process."""

    def plan() -> tuple[str, DictConfig]:
        action, planned = plan_run(config, run_dir, overrides, multirun)
        if action == "rerun":
            clear_attempt(run_dir)
        return action, planned

    if not processes.parallel:
        return plan()
    outcome = agreed(lambda: _plain(plan()) if processes.main else None, processes)
    outcome = broadcast(outcome, processes)
    return outcome[0], OmegaConf.create(outcome[1])


def _plain(planned: tuple[str, DictConfig]) -> tuple[str, Any]:
    return planned[0], OmegaConf.to_container(planned[1])


def _discard_if_unused(run_dir: Path, log_name: str) -> None:
    """Remove the folder Hydra made for a run that was refused before it started."""
    log_file = run_dir / log_name
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - {log_name}:
        return
    if log_file.exists() and log_file.stat().st_size > 0:
        return
    log_file.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # stops at the first folder that holds anything
        for folder in (run_dir, *list(run_dir.parents)[:3]):  # time, day, runs/, outputs/
            folder.rmdir()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _main(config: DictConfig) -> float | None:
    """Hydra's task function: one run, or one sweep member (in whichever process the launcher
    starts it: this one, a joblib worker, or each task of a SLURM job)."""
    export_submitit_tasks()  # a SLURM member of several tasks: they become one run's processes
    processes = from_environment()
    log_file = _DeferredLogFile()
    if not processes.main:  # quiet unless it fails (torchrun's are quieted before Hydra starts)
        log_file.drop()
        logging.getLogger().setLevel(logging.WARNING)
    try:
        with process_group(processes):
            return _run_task(config, processes, log_file)
    except UserError as error:  # joining failed (the run's own errors are handled inside)
        if processes.main or not isinstance(error, SharedError):
            print(f"trainlab: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


def _run_task(config: DictConfig, processes: Processes, log_file: _DeferredLogFile) -> float | None:
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    multirun = hydra_config.mode == RunMode.MULTIRUN
    overrides = list(hydra_config.overrides.task)
    title = run_name(hydra_config.job.override_dirname, 0) if multirun else "trainlab"
    action = None
    try:
        action, config = _plan_on_process_zero(config, run_dir, overrides, multirun, processes)
        if action == "done":
            metrics = read_json(run_dir / "metrics.json") or {}
            log.info("%s already finished (%s): skipped", run_dir, metrics.get("status"))
            return _objective(metrics)
        # Process 0 writes the run's files; the others may not even see its folder.
        files, swept = (
            _files_and_swept(action, config, run_dir, overrides, hydra_config)
            if processes.main
            else (None, {})
        )
        with _gpu_for_member(config, hydra_config), GracefulStop() as stop:
            metrics = run(
                config,
                run_dir,
                swept=swept,
                console=make_console(),
                title=title,
                command=list(sys.argv),
                resume=action == "resume",
                stop_requested=stop,
                config_files=files,
                on_start=log_file.release,
                resume_hint=_resume_hint(run_dir, multirun, hydra_config, processes),
            )
            if metrics["status"] == "interrupted":
                wait_for_all()  # process 0 has written the checkpoint and metrics.json
                stop.hand_over()  # under submitit: requeue the job, which resumes this run
                if processes.main:
                    print(
                        f"trainlab: interrupted by {stop.signal_name}: {metrics['message']}",
                        file=sys.stderr,
                    )
                elif stop.requeue_requested:
                    # Exit 0: a failed task would make srun end process 0 before it requeues.
                    return None
                raise SystemExit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        if processes.main:
            print(f"trainlab: interrupted; {run_dir} is marked interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None  # a sweep stops here too
    except (UserError, OmegaConfBaseException) as caught:
        error = as_user_error(caught)
        if processes.main:
            print(f"trainlab: error: {error}", file=sys.stderr)
        elif not isinstance(error, SharedError):
            # Its own error after the points where the processes agree on failures (see
            # distributed.agreed), so process 0 does not know it: say it in this process's log
            # and end the run (srun or torchrun ends the others) rather than leave them waiting.
            print(f"trainlab: error (process {processes.rank}): {error}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        if multirun and processes.main:
            _record_failure(run_dir, action, str(error))
        if multirun:
            return None  # a search sweeper records a failed trial
        if processes.main:  # the others have no log there and must not race it
            _discard_if_unused(run_dir, f"{hydra_config.job.name}.log")
        raise SystemExit(EXIT_USER_ERROR) from None
    except Exception as error:
        if processes.parallel and _lost_a_peer(error):
            # Another process ended first and shows its own error (its traceback, for a bug):
            # a second traceback from here would only hide it.
            print(
                f"trainlab: error (process {processes.rank}): another process of this run "
                f"ended first, so this one stopped too ({run_dir}; its error is in that "
                "process's output)",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
        # A bug, not a user mistake: keep the traceback, but let the rest of a sweep go on.
        if not multirun:
            raise
        log.error("run failed:\n%s", traceback.format_exc())
        if processes.main:  # run() recorded a failure while training; not one while setting up
            _record_failure(run_dir, action, f"{type(error).__name__}: {error}")
        if processes.parallel and not was_agreed(error):
            # Hydra would keep the error as the job's result and the task would exit 0, leaving
            # the other processes waiting for this one: exit non-zero so srun ends the job.
            # (An agreed failure has ended the others already, and process 0 records it.)
            raise SystemExit(1) from None
        return None
    finally:
        log_file.discard()  # records of a run that never started stay out of its folder
    return _objective(metrics)


def _files_and_swept(
    action: str, config: DictConfig, run_dir: Path, overrides: list[str], hydra_config: Any
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The .hydra files run() writes once every check passes (None: those there stand), and
    the overrides the run compares by."""
    files = None
    swept_from = overrides
    if action == "resume":  # compare by the overrides the run was started with
        saved_overrides = run_dir / ".hydra" / "overrides.yaml"
        if saved_overrides.is_file():
            swept_from = [str(o) for o in OmegaConf.load(saved_overrides)]
    if action in ("new", "rerun"):
        files = {
            "config.yaml": config,
            "hydra.yaml": OmegaConf.create({"hydra": hydra_config}),
            "overrides.yaml": OmegaConf.create(overrides),
        }
    elif differences(
        OmegaConf.to_container(saved_config(run_dir), resolve=True),
        OmegaConf.to_container(config, resolve=True),
    ):
        files = {"config.yaml": config}  # epochs extended: the folder says what it now holds
    return files, _swept(config, swept_from)


def _record_failure(run_dir: Path, action: str | None, error: str) -> None:
    """A sweep member's failure in its metrics.json, for the sweep's table, where run() did
    not record it (a failure while setting up). A member that failed as it resumed keeps its
    checkpoint, so the next run of the sweep resumes it."""
    recorded = read_json(run_dir / "metrics.json") or {}
    with contextlib.suppress(OutputError):  # a full disk: the error line still says it
        if action in ("new", "rerun") and recorded.get("status") in (None, "running"):
            write_json(run_dir / "metrics.json", {"status": "failed", "error": error})
        elif action == "resume" and (
            recorded.get("status") in ("running", "interrupted") or recorded.get("resumable")
        ):
            kept = {k: v for k, v in recorded.items() if k != "message"}
            failed = {"status": "failed", "error": error, "resumable": True}
            write_json(run_dir / "metrics.json", {**kept, **failed})


def _lost_a_peer(error: Exception) -> bool:
    """Whether a collective failed because another process of the run went away."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer")
    )


def _interrupt(signal_number: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run the way Ctrl-C does


def _refuse(problem: str | None) -> None:
    if problem is not None:
        raise UserError(problem)


def _check_command_line(argv: list[str]) -> str | None:
    """Compose the config as Hydra is about to; a mistake becomes one line with a did-you-mean.

    For a sweep, the fixed overrides are composed first (as Hydra does), then every member
    (trainlab.sweep.preflight).
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_dir:
        return None  # Hydra's own modes, or a config folder of the user's: Hydra reports
    if args.config_path or args.config_name or args.experimental_rerun:
        return None
    if args.cfg and args.multirun:  # Hydra would raise a ValueError with a traceback
        return (
            "--cfg shows one run's config and cannot be combined with -m; drop -m (a sweep's "
            "launcher shows with: trainlab hydra/launcher=NAME --cfg hydra -p hydra.launcher)"
        )

    def compose_overrides(overrides: list[str]) -> DictConfig:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True)

    fixed = list(args.overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(fixed)
        fixed = [o.input_line for o in parsed if not (args.multirun and o.is_sweep_override())]
        config = compose_overrides(fixed)
        output = config.hydra.sweep.dir if args.multirun else config.hydra.run.dir
    except Exception as error:
        return explain(error, fixed, compose_overrides)
    key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
    problem = _check_output_folder(Path(str(output)), key)
    if problem is None and args.multirun:
        members = sweep_members(config, list(args.overrides))
        if members is not None:
            problem = preflight(members, compose_overrides)
    elif problem is None and config.get("resume") is None:
        try:
            check_complete(task_config(config))
        except UserError as error:
            problem = str(error)
    return problem


def _check_output_folder(folder: Path, key: str) -> str | None:
    """The run folder must be creatable: its nearest existing parent a writable folder."""
    parent = folder.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        return (
            f"{key}={folder} cannot be created ({parent} is not a writable folder); "
            f"set {key} to a folder you can write to"
        )
    return None


def _join_processes(argv: list[str]) -> Processes:
    """Under torchrun: join the process group, agree on one run folder (process 0's), and keep
    the other processes' logging quiet."""
    processes = from_environment()
    if not processes.parallel:
        return processes
    join(processes)
    if "-m" in argv or "--multirun" in argv:
        raise (UserError if processes.main else SharedError)(
            "torchrun runs one experiment at a time; start sweeps with trainlab -m outside torchrun"
        )
    if not any(arg.startswith(("hydra.run.dir=", "resume=")) for arg in argv):
        stamp = datetime.now().strftime("outputs/runs/%Y-%m-%d/%H-%M-%S-%f")
        argv.append(f"hydra.run.dir={broadcast(stamp, processes)}")
    if not processes.main:
        argv += ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return processes


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _interrupt)  # outside training, SIGTERM stops like Ctrl-C
    try:
        processes = _join_processes(sys.argv)
        # Under torchrun every process checks; they agree, and process 0 says it once.
        agreed(lambda: _refuse(_check_command_line(sys.argv[1:])), processes)
    except UserError as error:
        if not isinstance(error, SharedError):  # process 0's, or a process's own before joining
            print(f"trainlab: error: {error}", file=sys.stderr)
        leave()
        raise SystemExit(EXIT_USER_ERROR) from None
    try:
        _main()
    finally:
        leave()


if __name__ == "__main__":
    main()
