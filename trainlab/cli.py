"""The ``trainlab`` command: command line -> checks -> Hydra -> exit code.

A mistake the user can fix ends as one line on stderr and exit code 2; the run itself is
trainlab.train's, and what an error that ends it means is trainlab.failures'. ``--help`` and
``--cfg`` import no torch.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from trainlab import resolvers, runlog
from trainlab.config_keys import override_key, shell_override
from trainlab.errors import SharedError, UserError
from trainlab.failures import EXIT_INTERRUPTED, EXIT_USER_ERROR
from trainlab.hydra_internals import compositions_shared, mode_known
from trainlab.preflight import CONFIG_DIR, Checked, check_command_line
from trainlab.project_dirs import add_code_folders, config_dir_as_searchpath

if TYPE_CHECKING:
    from trainlab.distributed import Processes
    from trainlab.interrupts import GracefulStop
    from trainlab.job import Job

run_name = resolvers.run_name  # a sweep member's folder name (registered as a resolver)
log = logging.getLogger("trainlab")


def main() -> None:
    """Console-script entry point."""
    with compositions_shared():  # the preflight's compositions serve Hydra too
        _main()


def _main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # outside training, SIGTERM stops like Ctrl-C
    processes = None
    _TYPED[:] = sys.argv  # what provenance records: the command as typed
    try:
        config_dir_as_searchpath(sys.argv)  # the user's conf/: one search path for all
        add_code_folders(sys.argv)  # the user's _target_ code
        processes = _join_processes(sys.argv)
        _name_members_by_what_varies(sys.argv)
        checked = _check(sys.argv[1:], processes)
    except UserError as error:
        if not isinstance(error, SharedError):  # process 0's, or a process's own before joining
            print(f"trainlab: error: {error}", file=sys.stderr)
        _leave(processes)
        raise SystemExit(EXIT_USER_ERROR) from None
    if _wants_help(sys.argv[1:]):
        print(app_help(sys.argv[1:]))
        return
    try:
        if checked.composed:
            with mode_known(checked.mode):
                _hydra_main()
        else:
            _hydra_main()
    finally:
        _leave(processes)


def _wants_help(argv: list[str]) -> bool:
    from trainlab.hydra_internals import parse_command_line

    args = parse_command_line(argv)
    return bool(args.help) and not (args.config_dir or args.config_path or args.config_name)


def app_help(argv: list[str]) -> str:
    """``trainlab --help``: Hydra's help page from conf/hydra/help, made without Hydra's listing
    of its own groups, which takes seconds."""
    from string import Template

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from trainlab.hydra_internals import parse_command_line
    from trainlab.preflight import task_config

    overrides = list(parse_command_line(argv).overrides)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose("config", overrides=overrides, return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        groups = sorted(g for g in loader.list_groups("") if g != "hydra")
        options = {  # with the overrides: hydra.searchpath adds the user's options
            group: loader.get_group_options(group, config_name="config", overrides=overrides)
            for group in groups
        }
    listing = "\n".join(
        f"{group}: {', '.join(_marked(group, option) for option in names)}"
        for group, names in options.items()
    )
    config_text = OmegaConf.to_yaml(task_config(config))
    listing += f"\n\n{_sweep_plugins()}"
    return Template(config.hydra.help.template).safe_substitute(
        APP_CONFIG_GROUPS=listing, HYDRA_CONFIG_GROUPS="", CONFIG=config_text
    )


_TYPED: list[str] = []
EXCLUDED_FROM_NAMES = "hydra.job.config.override_dirname.exclude_keys"


def _name_members_by_what_varies(argv: list[str]) -> None:
    """A sweep member's folder, and so its TensorBoard run, is named after the keys that vary
    in its sweep (``loss=huber,optimizer.lr=0.01``): the fixed overrides stay out of
    hydra.job.override_dirname (they are in the member's config and hparams)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from trainlab.hydra_internals import parse_command_line

    args = parse_command_line(argv[1:])
    if not args.multirun or any(override_key(o) == EXCLUDED_FROM_NAMES for o in args.overrides):
        return
    try:
        parsed = OverridesParser.create().parse_overrides(list(args.overrides))
    except Exception:
        return  # the preflight says what is wrong with it
    fixed = [
        o.key_or_group
        for o in parsed
        if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")
    ]
    argv.append(f"{EXCLUDED_FROM_NAMES}=[{','.join(dict.fromkeys(['experiment', *fixed]))}]")


def _marked(group: str, option: str) -> str:
    """An option that needs the sweep extra, with a star (the help's key says so)."""
    from trainlab.preflight import PLUGIN_OPTIONS

    return f"{option}*" if option in PLUGIN_OPTIONS.get(group, ()) else option


def _sweep_plugins() -> str:
    from importlib.util import find_spec

    from trainlab.preflight import PLUGIN_OPTIONS

    launchers = ", ".join(f"{name}*" for name in PLUGIN_OPTIONS["hydra/launcher"])
    sweepers = ", ".join(f"{name}*" for name in PLUGIN_OPTIONS["hydra/sweeper"])
    installed = find_spec("hydra_plugins.hydra_joblib_launcher") is not None
    return (
        "With -m: hydra/launcher=basic (one member after another), fused (members that share a "
        f"model and data trained together), {launchers}\n"
        f"         hydra/sweeper=basic (every combination), {sweepers}\n"
        "* needs the sweep extra: pip install -e '.[sweep]' "
        f"({'installed here' if installed else 'not installed here'})"
    )


def _check(argv: list[str], processes: Processes | None) -> Checked:
    """The command line's checks; under torchrun every process checks, and they agree."""
    if processes is None:
        return _refuse(check_command_line(argv))
    from trainlab.distributed import agreed

    return agreed(lambda: _refuse(check_command_line(argv)), processes)


def _refuse(checked: Checked) -> Checked:
    if checked.problem is not None:
        raise UserError(checked.problem)
    return checked


def _interrupt(signal_number: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run the way Ctrl-C does


def _join_processes(argv: list[str]) -> Processes | None:
    """Under torchrun: join the process group, agree on one run folder (process 0's), and keep
    the other processes' logging quiet. None in a plain process (torch is not imported)."""
    if "WORLD_SIZE" not in os.environ:
        return None
    from trainlab.distributed import broadcast, from_environment, join

    processes = from_environment()
    if not processes.parallel:
        return None
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


def _leave(processes: Processes | None) -> None:
    if processes is not None or "torch.distributed" in sys.modules:
        from trainlab.distributed import leave

        leave()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(config: DictConfig) -> float | None:
    """Hydra's task function: one run, or one sweep member (in whichever process the launcher
    starts it: this one, a joblib worker, or each task of a SLURM job)."""
    from trainlab.distributed import export_submitit_tasks, from_environment, process_group
    from trainlab.gpu_slots import gpu_for_member
    from trainlab.interrupts import GracefulStop

    export_submitit_tasks()  # a SLURM member of several tasks: they become one run's processes
    processes = from_environment()
    if not processes.main:  # quiet unless it fails (torchrun's are quieted before Hydra starts)
        runlog.drop()
        logging.getLogger().setLevel(logging.WARNING)
    gpu = gpu_for_member(config, HydraConfig.get())
    with process_group(processes), gpu, GracefulStop() as stop:
        job = _job(processes, stop)
        try:
            from trainlab.train import run

            metrics = run(config, job)
        except SystemExit:
            raise
        except BaseException as error:
            return _ended_early(error, job)
        finally:
            runlog.discard()  # records of a run that never started stay out of its folder
        return _ended(metrics, stop, job)


def _job(processes: Processes, stop: GracefulStop) -> Job:
    from trainlab.job import Job

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    multirun = hydra_config.mode == RunMode.MULTIRUN
    if multirun:
        hint = (
            "run the same sweep command again with "
            f"{shell_override('hydra.sweep.dir', hydra_config.sweep.dir)}"
        )
    elif processes.parallel:
        hint = (
            f"continue it with: torchrun --nproc-per-node={processes.world} -m trainlab "
            f"{shell_override('resume', run_dir)}"
        )
    else:
        hint = f"continue it with: trainlab {shell_override('resume', run_dir)}"
    return Job(
        run_dir=run_dir,
        multirun=multirun,
        overrides=list(hydra_config.overrides.task),
        hydra_config=hydra_config,
        title=run_name(hydra_config.job.override_dirname, 0) if multirun else "trainlab",
        command=list(_TYPED or sys.argv),
        resume_hint=hint,
        processes=processes,
        stop_requested=stop,
    )


def _ended_early(error: BaseException, job: Job) -> None:
    """Say what the failure policy decided; exit with its code, or let a sweep go on."""
    from trainlab.distributed import lost_a_peer, was_agreed
    from trainlab.failures import Failure, classify, decide, describe_bug
    from trainlab.run_folder import outcome_of

    processes = job.processes
    kind, text = classify(error, processes.parallel and lost_a_peer(error))
    outcome = outcome_of(error) or decide(  # None: it ended before a run folder was claimed
        Failure(kind, text, run_dir=str(job.run_dir), multirun=job.multirun,
                rank=processes.rank, world=processes.world, agreed=was_agreed(error))
    )  # fmt: skip
    if outcome.line is not None:
        print(outcome.line, file=sys.stderr)
    if outcome.traceback:
        raise error  # a bug: Hydra shows where it happened
    if kind == "bug":
        log.error("run failed:\n%s", describe_bug(error))  # a sweep goes on; its log keeps it
    if outcome.exit_code is not None:
        raise SystemExit(outcome.exit_code) from None
    return None  # a search sweeper records a failed trial


def _ended(metrics: dict[str, Any], stop: GracefulStop, job: Job) -> float | None:
    """A run that returned: its objective, or (stopped by a signal) the exit for that."""
    if metrics.get("status") != "interrupted":
        return objective(metrics)
    from trainlab.distributed import wait_for_all

    wait_for_all()  # process 0 has written the checkpoint and metrics.json
    stop.hand_over()  # under submitit: requeue the job, which resumes this run
    if job.processes.main:
        print(f"trainlab: interrupted by {stop.signal_name}: {metrics['message']}", file=sys.stderr)
    elif stop.requeue_requested:
        return None  # exit 0: a failed task would make srun end process 0 before it requeues
    raise SystemExit(EXIT_INTERRUPTED)


def objective(metrics: dict[str, Any]) -> float | None:
    """What a search sweeper (Optuna) optimizes: the validation value, never the test one.

    A diverged run is a failed trial (None; Optuna's sweeper chokes on NaN), whatever its best
    weights scored.
    """
    value = (metrics.get("val") or {}).get(metrics.get("primary_metric", ""))
    return value if metrics.get("status") in ("completed", "early_stopped") else None


if __name__ == "__main__":
    main()
