"""A stand-in for SLURM's commands on one machine, enough for submitit to run real job arrays.

``install(folder)`` writes ``sbatch``, ``srun`` and ``sacct`` into ``folder``; put it first on
PATH. They do what a cluster would, on localhost:

- ``sbatch SCRIPT`` reads the script's ``#SBATCH`` lines, starts one job per array index (all at
  once) in the background, and prints the job id the way sbatch does.
- ``srun ... COMMAND`` (inside a job) starts nodes x ntasks-per-node copies of COMMAND with the
  variables SLURM gives each task (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, ...), each node
  named ``localhost`` so the tasks can meet. With ``SLURM_KILL_BAD_EXIT=1``, a task that exits
  non-zero ends the others, as srun does. ``FAKE_SLURM_KILL_TASK=T:GLOB`` SIGKILLs task T
  once a file matching GLOB exists: a node that dies mid-run.
  ``FAKE_SLURM_TASK_ENV=[A.]T[,...]:NAME=VALUE[;...]`` sets a variable for those tasks only (of
  array job A when given): nodes that differ from the others.
  ``FAKE_SLURM_SIGNAL=SIG:GLOB`` sends SIG to every task once such a file exists, once per
  test (a preemption notice).
- ``scontrol requeue ID``: once the job's tasks have ended, the job starts again.
- ``sacct`` reports each job's state (RUNNING, COMPLETED or FAILED).

Only what submitit's SLURM executor uses is imitated; no scheduling, no GPUs.

A task is a fresh process as on a cluster, or, when ``FAKE_SLURM_WARM`` names the socket of a
warm node (``warm_node``, started by the tests), a process forked from one that has already
imported torch and trainlab: the same code path, seconds cheaper to start.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

STATE = "FAKE_SLURM_STATE"  # a folder for job ids and states


def install(folder: Path, state: Path) -> dict[str, str]:
    """Write the fake commands into ``folder``; return the environment that uses them."""
    folder.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    for command in ("sbatch", "srun", "sacct", "scontrol"):
        path = folder / command
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" {command} "$@"\n')
        path.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", STATE: str(state)}


def _task_env(specs: str, task: int) -> dict[str, str]:
    """``[A.]T[,[A.]T...]:NAME=VALUE`` specs, separated by ``;``: the variables this task (of
    the array job A, when given) gets."""
    array_index = os.environ.get("SLURM_ARRAY_TASK_ID")
    found = {}
    for spec in filter(None, specs.split(";")):
        places, assignment = spec.split(":", 1)
        for place in places.split(","):
            job, _, which = place.rpartition(".")
            if which == str(task) and job in ("", array_index):
                name, value = assignment.split("=", 1)
                found[name] = value
    return found


def _directives(script: str) -> dict[str, str]:
    found = {}
    for line in script.splitlines():
        match = re.match(r"#SBATCH --([\w-]+)(?:=(.*))?$", line.strip())
        if match:
            found[match.group(1)] = (match.group(2) or "").strip("'\"")
    return found


def sbatch(arguments: list[str]) -> int:
    script_path = Path(arguments[-1])
    directives = _directives(script_path.read_text())
    state = Path(os.environ[STATE])
    job_id = 1000 + len(list(state.glob("job*")))
    (state / f"job{job_id}").write_text(script_path.read_text())  # what was submitted
    array = directives.get("array", "0-0").split("%")[0]
    first, last = (int(n) for n in array.split("-"))
    nodes = int(directives.get("nodes", "1"))
    tasks = int(directives.get("ntasks-per-node", "1"))
    for index in range(first, last + 1):
        array = "array" in directives
        name = f"{job_id}_{index}" if array else str(job_id)
        env = {
            **os.environ,
            "SLURM_JOB_ID": str(job_id * 100 + index if array else job_id),  # each one's own
            "SLURM_JOB_NUM_NODES": str(nodes),
            "SLURM_JOB_NODELIST": ",".join(["localhost"] * nodes),
            "SLURM_NTASKS": str(nodes * tasks),
            "SLURM_NTASKS_PER_NODE": str(tasks),
        }
        if array:
            env.update(SLURM_ARRAY_JOB_ID=str(job_id), SLURM_ARRAY_TASK_ID=str(index))
        (state / f"{name}.state").write_text("RUNNING")
        with open(state / f"{name}.out", "w") as output:  # what the job's script printed
            subprocess.Popen(
                [sys.executable, __file__, "run-job", name, str(script_path)],
                env=env, start_new_session=True, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
    print(f"Submitted batch job {job_id}")
    return 0


def run_job(name: str, script: str) -> int:
    state = Path(os.environ[STATE])
    for restart in range(5):
        job = subprocess.Popen(
            ["bash", script],
            env={**os.environ, "SLURM_RESTART_COUNT": str(restart)},
        )
        code = job.wait()
        requeued = state / f"{name}.requeue"
        if not requeued.exists():
            break
        requeued.unlink()
    (state / f"{name}.state").write_text("COMPLETED" if code == 0 else "FAILED")
    return code


def scontrol(arguments: list[str]) -> int:
    """``scontrol requeue ID``: when the job's tasks have ended, it starts again."""
    assert arguments[0] == "requeue", arguments
    state = Path(os.environ[STATE])
    (state / f"{arguments[1]}.requeue").write_text("")
    with open(state / "requeued", "a") as record:  # for the tests to read
        record.write(f"{arguments[1]}\n")
    return 0  # the tasks then exit (submitit's handler exits after requeueing); it restarts


def _task_file(pattern: str, task: int) -> str:
    env = os.environ
    names = {"%A": env.get("SLURM_ARRAY_JOB_ID", ""), "%a": env.get("SLURM_ARRAY_TASK_ID", "")}
    names.update({"%j": env["SLURM_JOB_ID"], "%t": str(task)})
    for key, value in names.items():
        pattern = pattern.replace(key, value)
    return pattern


def _signal_when(processes: list[subprocess.Popen], number: int, pattern: str) -> None:
    """Send signal ``number`` to every task once a file matching ``pattern`` exists."""
    sent = Path(os.environ[STATE], "signal-sent")
    while any(p.poll() is None for p in processes) and not sent.exists():
        if glob.glob(pattern):
            sent.write_text("")
            for process in processes:
                if process.poll() is None:
                    process.send_signal(number)
            return
        time.sleep(0.02)


def _kill_when(process: subprocess.Popen, pattern: str) -> None:
    """SIGKILL ``process`` once a file matching ``pattern`` exists (a node dying mid-run)."""
    while process.poll() is None:
        if glob.glob(pattern):
            process.kill()
            return
        time.sleep(0.02)


def srun(arguments: list[str]) -> int:
    files: dict[str, str] = {}
    while arguments and arguments[0].startswith("--"):
        option = arguments.pop(0)
        if option in ("--output", "--error"):
            files[option] = arguments.pop(0)
    nodes = int(os.environ["SLURM_JOB_NUM_NODES"])
    per_node = int(os.environ["SLURM_NTASKS_PER_NODE"])
    processes = []
    for task in range(nodes * per_node):
        env = {
            **os.environ,
            "SLURM_PROCID": str(task),
            "SLURM_LOCALID": str(task % per_node),
            "SLURM_NODEID": str(task // per_node),
            "SLURM_STEP_NODELIST": os.environ["SLURM_JOB_NODELIST"],
        }
        env.update(_task_env(os.environ.get("FAKE_SLURM_TASK_ENV", ""), task))
        out_path = Path(_task_file(files["--output"], task))
        err_path = Path(_task_file(files.get("--error", files["--output"]), task))
        # The job can start before submitit has made its folder (a real queue takes longer);
        # submitit's task then waits for its pickle to appear there.
        for path in (out_path, err_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        processes.append(_start_task(arguments, env, out_path, err_path))
    kill = os.environ.get("FAKE_SLURM_KILL_TASK")
    if kill:
        task, pattern = kill.split(":", 1)
        threading.Thread(target=_kill_when, args=(processes[int(task)], pattern)).start()
    notice = os.environ.get("FAKE_SLURM_SIGNAL")
    if notice:
        name, pattern = notice.split(":", 1)
        number = getattr(signal, f"SIG{name}")
        threading.Thread(target=_signal_when, args=(processes, number, pattern)).start()

    codes: dict[int, int] = {}
    while len(codes) < len(processes):
        for task, process in enumerate(processes):
            if task not in codes and process.poll() is not None:
                codes[task] = process.returncode
                with open(Path(os.environ[STATE], "exits"), "a") as record:  # for the tests
                    attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
                    record.write(f"attempt {attempt} task {task} exit {process.returncode}\n")
                if process.returncode != 0 and os.environ.get("SLURM_KILL_BAD_EXIT") == "1":
                    for other in processes:
                        if other.poll() is None:
                            other.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    return next((code for code in codes.values() if code != 0), 0) and 1


class WarmTask:
    """A task forked by the warm node, with the parts of subprocess.Popen srun uses."""

    def __init__(self, arguments: list[str], env: dict[str, str], out: str, err: str) -> None:
        self.connection = socket.socket(socket.AF_UNIX)
        self.connection.connect(env["FAKE_SLURM_WARM"])
        request = {"argv": arguments, "env": env, "cwd": os.getcwd(), "out": out, "err": err}
        self.connection.sendall(json.dumps(request).encode() + b"\n")
        self.reader = self.connection.makefile()
        self.pid = int(self.reader.readline())
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self.connection], [], [], 0)
            if ready:
                self.returncode = int(self.reader.readline())
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _start_task(arguments: list[str], env: dict[str, str], out: Path, err: Path):
    if "FAKE_SLURM_WARM" in env and arguments[1:4] == ["-u", "-m", "submitit.core._submit"]:
        return WarmTask(arguments, env, str(out), str(err))
    return subprocess.Popen(arguments, env=env, stdout=open(out, "a"), stderr=open(err, "a"))


def _report_exit(connection: socket.socket, pid: int) -> None:
    """In the warm node: say the task's exit code when it ends (as Popen gives it)."""
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    with contextlib.suppress(OSError):
        connection.sendall(f"{code}\n".encode())
    connection.close()


def _run_task(request: dict) -> None:
    """In the forked task: its files, folder and environment, then submitit's task runner."""
    import runpy

    for number, path in ((1, request["out"]), (2, request["err"])):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(descriptor, number)
        os.close(descriptor)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(
            number, signal.SIG_DFL if number != signal.SIGINT else signal.default_int_handler
        )
    sys.stdout.reconfigure(write_through=True)
    sys.argv = [request["argv"][3], *request["argv"][4:]]
    code = 0
    try:
        runpy.run_module(request["argv"][3], run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def warm_node(path: str) -> None:
    """Import what a task needs once, then fork a task for each request on the socket."""
    import torch._dynamo
    import torch.distributed
    import torch.utils.tensorboard  # noqa: F401
    from submitit.core import _submit  # noqa: F401

    import trainlab.cli
    import trainlab.train  # noqa: F401

    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(64)
    while True:  # forks here, in the one thread that imports: the others only wait
        connection, _ = server.accept()
        request = json.loads(connection.makefile().readline())
        pid = os.fork()
        if pid == 0:
            server.close()
            _run_task(request)
        connection.sendall(f"{pid}\n".encode())
        threading.Thread(target=_report_exit, args=(connection, pid), daemon=True).start()


def sacct(arguments: list[str]) -> int:
    state = Path(os.environ[STATE])
    print("JobID|State|NodeList")
    for path in sorted(state.glob("*.state")):
        print(f"{path.stem}|{path.read_text()}|localhost")
    return 0


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "run-job":
        sys.exit(run_job(*rest))
    if command == "warm-node":
        warm_node(*rest)
    commands = {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scontrol": scontrol}
    sys.exit(commands[command](rest))
