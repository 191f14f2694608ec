"""Run the real ``trainlab`` CLI and kill it at a chosen point, as a crash or a user would.

python tests/kill_driver.py --after-batches N [--signal KILL|INT|TERM] [--in-checkpoint-write K] -- ARGS

``--after-batches N``: send the signal (KILL, INT, TERM, STOP, ...) (``--times`` times; ``--signal RAISE`` raises an error
instead) when the training loader is asked for batch N + 1 (counted over the whole process, so
across sweep members too); ``--only-rank R`` does it in one torchrun process only. ``--in-checkpoint-write K``:
SIGKILL halfway through writing the K-th checkpoint; ``--after-checkpoint K``: right after it. ``--fake-submitit FILE``: install a
SIGUSR2 handler as submitit does on SLURM; it writes the step of the checkpoint on disk to FILE
(what a requeued job would resume from) and exits as submitit does after requeueing.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys

import trainlab.checkpoint
from trainlab.data.loader import InMemoryLoader


def _patch_loader(after: int, number: int, times: int, only_rank: int | None) -> None:
    original = InMemoryLoader.batch_rows  # every training batch is drawn there (fused ones too)
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

    InMemoryLoader.batch_rows = counting


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


def _patch_folder_writes(kill_at: int) -> None:
    """SIGKILL right after the run folder's K-th write of its own files (metrics.json, .hydra/,
    provenance.json, an extension's kept copy): a kill as the run starts."""
    import trainlab.run_folder as run_folder

    count = {"writes": 0}

    def counted(original):
        def write(*args, **kwargs):
            original(*args, **kwargs)
            count["writes"] += 1
            if count["writes"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        return write

    run_folder.write_json = counted(run_folder.write_json)
    run_folder.atomic_write = counted(run_folder.atomic_write)


def _quick_submitit() -> None:
    """submitit's waits sized for a real cluster (a dead job's result awaited 15 s, job states
    polled every 2 s growing to 10 minutes) made short for the stand-in SLURM on this machine."""
    from submitit.core import core
    from submitit.slurm import slurm

    core.Job._results_timeout_s = 2
    slurm.SlurmJob.watcher._delay_s = 1
    core.InfoWatcher.update_if_long_enough = lambda self, mode: (
        None if mode == "cache" else self.update()
    )


def _fake_submitit(record: str) -> None:
    def requeue(number, frame) -> None:
        from pathlib import Path

        checkpoints = list(Path.cwd().rglob("checkpoint.pt"))
        step = trainlab.checkpoint.load_checkpoint(checkpoints[0])["engine"]["step"]
        Path(record).write_text(f"requeued at step {step}\n")
        sys.exit(-1)  # submitit's SignalHandler._exit

    signal.signal(signal.SIGUSR2, requeue)


def install(
    after_batches: int | None = None,
    signal_name: str = "KILL",
    in_checkpoint_write: int | None = None,
    after_checkpoint: int | None = None,
    times: int = 1,
    fake_submitit: str | None = None,
    only_rank: int | None = None,
    file_size_limit: int | None = None,
    in_folder_write: int | None = None,
    quick_submitit: bool = False,
) -> None:
    """Install the chosen kill points in this process (see the module docstring);
    ``file_size_limit``: every write past that many bytes fails, as on a full disk."""
    if file_size_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    if after_batches is not None:
        number = 0 if signal_name == "RAISE" else getattr(signal, f"SIG{signal_name}")
        _patch_loader(after_batches, number, times, only_rank)
    if fake_submitit is not None:
        _fake_submitit(fake_submitit)
    if in_checkpoint_write is not None:
        _patch_checkpoint(in_checkpoint_write, after_write=False)
    if after_checkpoint is not None:
        _patch_checkpoint(after_checkpoint, after_write=True)
    if in_folder_write is not None:
        _patch_folder_writes(in_folder_write)
    if quick_submitit:
        _quick_submitit()


if __name__ == "__main__":  # under torchrun: python tests/kill_driver.py OPTIONS -- ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--after-batches", type=int)
    parser.add_argument("--signal", "--kill-with", dest="signal", default="KILL")  # torchrun: -with
    parser.add_argument("--in-checkpoint-write", type=int)
    parser.add_argument("--after-checkpoint", type=int)
    parser.add_argument("--times", type=int, default=1)
    parser.add_argument("--fake-submitit")
    parser.add_argument("--only-rank", type=int)  # under torchrun: act in this process only
    options, rest = parser.parse_known_args()
    install(
        options.after_batches, options.signal, options.in_checkpoint_write,
        options.after_checkpoint, options.times, options.fake_submitit, options.only_rank,
    )  # fmt: skip
    sys.argv = ["trainlab", *[a for a in rest if a != "--"]]
    from trainlab.cli import main

    main()
