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
  ``FAKE_SLURM_TASK_ENV=T[,T...]:NAME=VALUE`` sets a variable for those tasks only: nodes that
  differ from the others.
  ``FAKE_SLURM_SIGNAL=SIG:GLOB`` sends SIG to every task once such a file exists, once per
  test (a preemption notice).
- ``scontrol requeue ID``: once the job's tasks have ended, the job starts again.
- ``sacct`` reports each job's state (RUNNING, COMPLETED or FAILED).

Only what submitit's SLURM executor uses is imitated; no scheduling, no GPUs.
"""

from __future__ import annotations

import glob
import os
import re
import signal
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
        special = os.environ.get("FAKE_SLURM_TASK_ENV")  # T[,T...]:NAME=VALUE, those tasks only
        if special and str(task) in special.split(":", 1)[0].split(","):
            name, value = special.split(":", 1)[1].split("=", 1)
            env[name] = value
        out_path = Path(_task_file(files["--output"], task))
        err_path = Path(_task_file(files.get("--error", files["--output"]), task))
        # The job can start before submitit has made its folder (a real queue takes longer);
        # submitit's task then waits for its pickle to appear there.
        for path in (out_path, err_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        out = open(out_path, "a")  # noqa: SIM115
        err = open(err_path, "a")  # noqa: SIM115
        processes.append(subprocess.Popen(arguments, env=env, stdout=out, stderr=err))
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
    commands = {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scontrol": scontrol}
    sys.exit(commands[command](rest))
