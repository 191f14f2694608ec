"""Run the real ``trainlab`` CLI and kill it at a chosen point, as a crash or a user would.

python tests/kill_driver.py --after-batches N [--signal KILL|INT|TERM] [--in-checkpoint-write K] -- ARGS

``--after-batches N``: send the signal (``--times`` times; ``--signal RAISE`` raises an error
instead) when the training loader is asked for batch N + 1 (counted over the whole process, so
across sweep members too); ``--only-rank R`` does it in one torchrun process only. ``--in-checkpoint-write K``:
SIGKILL halfway through writing the K-th checkpoint; ``--after-checkpoint K``: right after it. ``--fake-submitit FILE``: install a
SIGUSR2 handler as submitit does on SLURM; it writes the step of the checkpoint on disk to FILE
(what a requeued job would resume from) and exits as submitit does after requeueing.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import trainlab.checkpoint
from trainlab.cli import main
from trainlab.data.loader import InMemoryLoader


def _patch_loader(after: int, number: int, times: int, only_rank: int | None) -> None:
    original = InMemoryLoader.__iter__
    count = {"batches": 0}
    mine = only_rank is None or int(os.environ.get("RANK", 0)) == only_rank

    def counting(self):
        for batch in original(self):
            if count["batches"] == after and mine:
                if number == 0:
                    raise RuntimeError("a failure in this process only")
                for _ in range(times):  # a second signal lands before the step is done
                    os.kill(os.getpid(), number)
            count["batches"] += 1
            yield batch

    InMemoryLoader.__iter__ = counting


def _patch_checkpoint(kill_at: int, after_write: bool) -> None:
    original = trainlab.checkpoint.atomic_write
    count = {"writes": 0}

    def half_then_kill(path, write, *args, **kwargs):
        count["writes"] += 1
        if count["writes"] != kill_at:
            return original(path, write, *args, **kwargs)
        if after_write:
            original(path, write, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        def half(file) -> None:
            write(file)
            file.truncate(file.tell() // 2)
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        return original(path, half, *args, **kwargs)

    trainlab.checkpoint.atomic_write = half_then_kill


def _fake_submitit(record: str) -> None:
    def requeue(number, frame) -> None:
        from pathlib import Path

        checkpoints = list(Path.cwd().rglob("checkpoint.pt"))
        step = trainlab.checkpoint.load_checkpoint(checkpoints[0])["engine"]["step"]
        Path(record).write_text(f"requeued at step {step}\n")
        sys.exit(-1)  # submitit's SignalHandler._exit

    signal.signal(signal.SIGUSR2, requeue)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--after-batches", type=int)
    parser.add_argument("--signal", "--kill-with", dest="signal", default="KILL")  # torchrun: -with
    parser.add_argument("--in-checkpoint-write", type=int)
    parser.add_argument("--after-checkpoint", type=int)
    parser.add_argument("--times", type=int, default=1)
    parser.add_argument("--fake-submitit")
    parser.add_argument("--only-rank", type=int)  # under torchrun: act in this process only
    options, rest = parser.parse_known_args()
    if options.after_batches is not None:
        number = 0 if options.signal == "RAISE" else getattr(signal, f"SIG{options.signal}")
        _patch_loader(options.after_batches, number, options.times, options.only_rank)
    if options.fake_submitit is not None:
        _fake_submitit(options.fake_submitit)
    if options.in_checkpoint_write is not None:
        _patch_checkpoint(options.in_checkpoint_write, after_write=False)
    if options.after_checkpoint is not None:
        _patch_checkpoint(options.after_checkpoint, after_write=True)
    sys.argv = ["trainlab", *[a for a in rest if a != "--"]]
    main()
