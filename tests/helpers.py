"""Test helpers: compose the real config in-process, and run the real CLI in a subprocess."""

from __future__ import annotations

import atexit
import copy
import functools
import importlib.util
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import trainlab.resolvers  # noqa: F401  (registers the config resolvers)
from trainlab.preflight import CONFIG_DIR

REPO = Path(__file__).resolve().parent.parent


def compose_config(*overrides: str) -> DictConfig:
    """The config ``trainlab <overrides>`` would run with (a copy: tests may change it)."""
    return copy.deepcopy(_composed(tuple(merged(overrides))))


@functools.cache
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def train_run(
    config: DictConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_requested=None,
    command: list[str] | None = None,
    multirun: bool = False,
    overrides: list[str] | None = None,
) -> dict:
    """One run in this process, as ``trainlab`` runs it (quietly): what its metrics.json holds.
    ``resume`` continues the run in ``run_dir`` from its checkpoint; ``overrides`` are those of
    the command line (a resume may change only what they set)."""
    from rich.console import Console

    from trainlab.job import Job
    from trainlab.train import run

    if resume:
        config = config.copy()
        config.resume = str(run_dir)
    job = Job(
        run_dir=Path(run_dir),
        multirun=multirun,
        overrides=list(overrides or []),
        command=command or ["trainlab"],
        console=Console(file=open(os.devnull, "w")),  # noqa: SIM115
        **({"stop_requested": stop_requested} if stop_requested else {}),
    )
    return run(config, job)


def member_metrics(sweep: Path) -> dict[str, dict]:
    """metrics.json of every run below ``sweep``, by folder name."""
    return {
        path.parent.name: json.loads(path.read_text())
        for path in sorted(sweep.rglob("metrics.json"))
    }


ENV = {**os.environ, "HYDRA_FULL_ERROR": "0", "COLUMNS": "200"}


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def merged(args: tuple[str, ...] | list[str]) -> list[str]:
    """The command line with each override given once: a later ``key=value`` replaces an
    earlier one of the same key, as the tests compose them (trainlab itself refuses a key given
    twice). Flags and their values stay in front, in their order."""
    overrides: dict[str, str] = {}
    for arg in filter(_is_override, args):
        key = arg.split("=", 1)[0].lstrip("+~")
        overrides.pop(key, None)
        overrides[key] = arg
    return [*(a for a in args if not _is_override(a)), *overrides.values()]


_SERVER = None
_STARTED: list = []


@atexit.register
def _end_leftovers() -> None:
    """Kill what a failed test left running (a stopped child would keep pytest from exiting)."""
    for process in _STARTED:
        if process.is_alive():
            process.kill()


def forkserver():
    """A forkserver that has imported torch, Hydra and trainlab once (tests/cli_child.py)."""
    global _SERVER
    if _SERVER is None:
        _SERVER = multiprocessing.get_context("forkserver")
        _SERVER.set_forkserver_preload(["tests.cli_child"])
    return _SERVER


class CliProcess:
    """The real ``trainlab`` entry point running in a child of the forkserver, with the parts of
    subprocess.Popen's interface the tests use."""

    def __init__(self, args, cwd: Path, env: dict[str, str] | None, driver: dict | None) -> None:
        from tests import cli_child

        self.args = list(args)
        self._files = tempfile.mkdtemp(prefix="trainlab-cli-")
        self._out, self._err = (os.path.join(self._files, name) for name in ("out", "err"))
        environ = {**ENV, **(env or {})}
        self._process = forkserver().Process(
            target=cli_child.run,
            args=(self.args, str(cwd), environ, self._out, self._err, driver),
        )
        self._process.start()
        _STARTED.append(self._process)
        self.returncode: int | None = None
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self._process.join(timeout)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        outputs = tuple(Path(path).read_text(errors="replace") for path in (self._out, self._err))
        shutil.rmtree(self._files, ignore_errors=True)
        self.returncode = self._process.exitcode
        _STARTED.remove(self._process)
        self._process.close()  # its pipes, at once
        return outputs  # type: ignore[return-value]


def map_in_workers(function, items: list, workers: int = 2) -> list:
    """``function(item)`` for every item, in warm forkserver workers (torch and trainlab
    imported already), so that independent checks use both of the machine's cores."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
        max_workers=workers, mp_context=forkserver(), initializer=_one_thread
    ) as pool:
        return list(pool.map(function, items))


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # two workers on two cores: more threads would fight


def start_child(target, *args):
    """``target(*args)`` started in a forkserver child (torch and trainlab imported already)."""
    child = forkserver().Process(target=target, args=args)
    child.start()
    _STARTED.append(child)
    return child


def run_in_children(target, *args, count: int = 2, timeout: float = 300) -> list[int]:
    """``target(*args)`` in ``count`` forkserver children at once (a module-level function,
    run with torch and trainlab already imported); their exit codes."""
    children = [forkserver().Process(target=target, args=args) for _ in range(count)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout)
    codes = [child.exitcode for child in children]
    for child in children:
        if child.exitcode is None:
            child.kill()
        child.join()
        child.close()
    return codes


def start_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    driver: dict | None = None,
    as_given: bool = False,
) -> CliProcess:
    """Start ``trainlab ARGS`` without waiting for it (``driver``: kill points, see
    kill_driver; ``as_given``: the arguments exactly as given, not merged)."""
    return CliProcess(list(args) if as_given else merged(args), cwd, env, driver)


def run_cli(
    *args: str,
    cwd: Path,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    driver: dict | None = None,
    as_given: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``trainlab ARGS`` (its real entry point) and capture its output."""
    process = start_cli(*args, cwd=cwd, env=env, driver=driver, as_given=as_given)
    stdout, stderr = process.communicate(timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_processes(
    *args: str, cwd: Path, world: int = 2, driver: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``trainlab ARGS`` as one data-parallel run of ``world`` processes, each told its place
    the way torchrun tells it (RANK, WORLD_SIZE, MASTER_ADDR, ...), started as forkserver
    children. (What needs torchrun itself, such as ending the others when one dies, is tested
    through the real torchrun.) The outputs are joined; the code is the first non-zero one."""
    place = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    place.update(WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    started = [
        start_cli(
            *args, cwd=cwd, driver=driver, env={**place, "RANK": str(r), "LOCAL_RANK": str(r)}
        )
        for r in range(world)
    ]
    outputs = [process.communicate(timeout) for process in started]
    code = next((p.returncode for p in started if p.returncode), 0)
    stdout, stderr = ("".join(output[i] for output in outputs) for i in (0, 1))
    return subprocess.CompletedProcess(started[0].args, code, stdout, stderr)


def run_cli_process(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m trainlab ARGS`` as a new process: for what only a fresh interpreter shows."""
    return subprocess.run(
        [sys.executable, "-m", "trainlab", *args],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


# Tests of Hydra's sweep plugins skip cleanly without the sweep extra.
needs_plugin = {
    name: pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"{name} not installed (pip install -e '.[sweep]')",
    )
    for name, module in (
        ("joblib", "hydra_plugins.hydra_joblib_launcher"),
        ("optuna", "hydra_plugins.hydra_optuna_sweeper"),
        ("submitit", "hydra_plugins.hydra_submitit_launcher"),
    )
}

# Overrides that make a run take well under a second.
TINY = ("dataset.train_size=256", "dataset.val_size=128", "dataset.test_size=128", "epochs=3")


def tensorboard_experiment(logdir: Path):
    """The HParams dashboard's experiment as TensorBoard's own backend builds it for ``logdir``
    (its hparam and metric columns, in the order the dashboard takes them)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    hparams = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer, data_provider=provider)
    )
    request = context.RequestContext()
    return hparams.experiment_from_metadata(
        request,
        "",
        True,
        hparams.hparams_metadata(request, ""),
        hparams.hparams_from_data_provider(request, "", None),
    )
