"""What the user waits for before anything trains: ``trainlab --help``, ``trainlab --cfg job``,
``trainlab-report`` on a sweep, and a default run start to finish, each a fresh process.

Prints the median wall time of ``--repeats`` runs of each command (the goal: the help within
1.5 s on an idle machine; it imports no torch).

    python scripts/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def seconds(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = [sys.executable, "-m"]
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        sweep = cwd / "sweep"
        subprocess.run(
            [*python, "trainlab", "-m", "seed=0,1", "epochs=1", f"hydra.sweep.dir={sweep}"],
            cwd=cwd, check=True, capture_output=True,
        )  # fmt: skip
        commands = {
            "trainlab --help": [*python, "trainlab", "--help"],
            "trainlab --cfg job": [*python, "trainlab", "--cfg", "job"],
            "trainlab-report SWEEP --no-plots": [
                *python,
                "trainlab.report",
                str(sweep),
                "--no-plots",
            ],
        }
        for name, command in commands.items():
            times = [seconds(command, cwd) for _ in range(args.repeats)]
            print(f"{name:36s} {statistics.median(times):6.2f} s (median of {args.repeats})")
        runs = [
            seconds([*python, "trainlab", f"hydra.run.dir={cwd / f'run{i}'}"], cwd)
            for i in range(max(1, args.repeats // 2))
        ]
        print(f"{'trainlab (the default run)':36s} {statistics.median(runs):6.2f} s")


if __name__ == "__main__":
    main()
