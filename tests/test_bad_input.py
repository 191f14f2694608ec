"""The bad-input catalogue: every mistake a user can make on the command line ends in one
clear line naming the problem and the fix, a non-zero exit, no traceback, and nothing
overwritten: a finished run beside it stays byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.helpers import ENV, TINY, run_cli
from tests.image_files import write_idx_dataset

FINISHED = "outputs/finished"
# (id, command-line arguments, text the one error line must contain). {root} is the test's
# working folder, where the finished run and the broken inputs live.
CASES = [
    ("unknown option", ["loss=hubr"], "loss=hubr: no such option; did you mean huber?"),
    (
        "unknown key",
        ["optimizer.lrr=0.1"],
        "optimizer.lrr: no such key; did you mean optimizer.lr?",
    ),
    ("unknown top-level key", ["epoch=3"], "epoch: no such key; did you mean epochs?"),
    ("unknown preset", ["+experiment=lr_swep"], "did you mean lr_sweep?"),
    ("override without value", ["loss"], "write overrides as key=value"),
    ("wrong type", ["epochs=abc"], "epochs must be an integer"),
    ("wrong choice", ["precision=fp16"], "precision must be one of"),
    ("negative lr", ["optimizer.lr=-0.1"], "optimizer.lr must be > 0"),
    ("zero lr", ["optimizer.lr=0"], "optimizer.lr must be > 0"),
    ("zero batch size", ["batch_size=0"], "batch_size must be >= 1"),
    ("zero epochs", ["epochs=0"], "epochs must be >= 1"),
    ("zero patience", ["early_stopping.patience=0"], "early_stopping.patience must be >= 1"),
    ("negative min_delta", ["early_stopping.min_delta=-1"], "early_stopping.min_delta"),
    ("negative seed", ["seed=-1"], "seed must be in [0, 2^63)"),
    ("zero eval interval", ["eval_every_epochs=0"], "eval_every_epochs must be >= 1"),
    (
        "zero checkpoint interval",
        ["checkpoint.every_steps=0"],
        "checkpoint.every_steps must be >= 1",
    ),
    ("dropout above 1", ["model.dropout=1.5"], "model.dropout"),
    (
        "elastic-net ratio above 1",
        ["regularizer=elastic_net", "regularizer.l1_ratio=1.5"],
        "regularizer.l1_ratio",
    ),
    (
        "decay rate above 1",
        ["schedule=exponential", "schedule.decay_rate=1.5"],
        "schedule.decay_rate must be in (0, 1]",
    ),
    (
        "zero step interval",
        ["schedule=step", "schedule.step_epochs=0"],
        "schedule.step_epochs must be >= 1",
    ),
    ("momentum above 1", ["optimizer=momentum", "optimizer.momentum=1.5"], "momentum"),
    ("device that does not exist", ["device=tpu"], "device must be auto, cpu, cuda"),
    (
        "loss that does not fit the task",
        ["loss=hinge", "dataset.task=regression"],
        "loss=hinge does not fit the regression task",
    ),
    (
        "ranking task with a classification loss",
        ["dataset.task=ranking"],
        "loss=cross_entropy does not fit the ranking task",
    ),
    ("image model on vectors", ["model=cnn"], "model=cnn needs image data"),
    (
        "missing dataset files",
        ["dataset=mnist", "dataset.root={root}/nodata", "dataset.download=false"],
        "files missing in",
    ),
    (
        "corrupt dataset files",
        ["dataset=mnist", "dataset.root={root}/corrupt", "dataset.download=false"],
        "dataset=mnist",
    ),
    (
        "resume path that does not exist",
        ["resume={root}/outputs/nothing-here"],
        "no trainlab run there",
    ),
    (
        "resume with a changed experiment",
        ["resume={root}/outputs/finished", "loss=mse"],
        "changes loss (run has cross_entropy, given mse)",
    ),
    (
        "resume of a finished run",
        ["resume={root}/outputs/finished"],
        "has finished all its 3 epochs",
    ),
    (
        "corrupt checkpoint",
        ["resume={root}/outputs/corrupt-ckpt", "epochs=5"],
        "is damaged or not a trainlab checkpoint",
    ),
    (
        "truncated checkpoint",
        ["resume={root}/outputs/truncated-ckpt", "epochs=5"],
        "is damaged or not a trainlab checkpoint",
    ),
    (
        "foreign checkpoint",
        ["resume={root}/outputs/foreign-ckpt", "epochs=5"],
        "is not a trainlab checkpoint",
    ),
    (
        "mismatched checkpoint",
        ["resume={root}/outputs/mismatched-ckpt", "epochs=5"],
        "was written for another experiment",
    ),
    (
        "run folder that holds a run",
        ["hydra.run.dir={root}/outputs/finished"],
        "already holds a run (completed)",
    ),
    ("unwritable output folder", ["hydra.run.dir={root}/a-file/run"], "cannot be created"),
    (
        "sweep with one bad member",
        ["-m", "optimizer.lr=0.01,-1", "hydra.sweep.dir={root}/outputs/sweep"],
        "1 of 2 sweep members are invalid",
    ),
    (
        "resume with fewer epochs",
        ["resume={root}/outputs/finished", "epochs=2"],
        "can only extend it",
    ),
    (
        "resume changing the device",
        ["resume={root}/outputs/finished", "device=cpu", "epochs=5"],
        "changes device",
    ),
    (
        "resume into another folder",
        ["resume={root}/outputs/finished", "epochs=5", "hydra.run.dir={root}/outputs/elsewhere"],
        "continues the run in its own folder",
    ),
    ("resume deleting a group", ["resume={root}/outputs/finished", "~loss"], "changes loss"),
    (
        "run folder in use",
        ["hydra.run.dir={root}/outputs/busy"],
        "is being run right now by process",
    ),
    (
        "run folder inside a run",
        ["hydra.run.dir={root}/outputs/finished/sub"],
        "lies inside the run folder",
    ),
    ("run folder with other files", ["hydra.run.dir={root}"], "already holds other files"),
    ("group deleted", ["~loss"], "loss: no option chosen"),
    ("interpolation to nowhere", ["optimizer.lr=${nope}"], "Interpolation key 'nope' not found"),
    ("infinite lr", ["optimizer.lr=inf"], "optimizer.lr must be > 0 and finite"),
    (
        "rmsprop alpha above 1",
        ["optimizer=rmsprop", "optimizer.alpha=2"],
        "optimizer.alpha must be in [0, 1)",
    ),
    ("data too large for memory", ["dataset.train_size=1000000000000"], "lower dataset.train_size"),
    ("model too large for memory", ["model.hidden_sizes=[10000000000]"], "cannot be built here"),
    ("too many threads", ["cpu_threads=100000"], "cpu_threads must be null or 1.."),
    (
        "sweep members sharing a folder",
        ["-m", "seed=0,1", "hydra.sweep.subdir=x", "hydra.sweep.dir={root}/outputs/sweep"],
        "would share its folder",
    ),
    (
        "slurm members whose batch does not divide among their GPUs",
        [
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.gpus_per_node=4",
            "batch_size=66",
            "seed=0,1",
            "hydra.sweep.dir={root}/outputs/sweep",
        ],
        "batch_size=66 (the global batch) does not divide among 4 processes",
    ),
    (
        "slurm members on lbfgs across nodes",
        [
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.nodes=2",
            "optimizer=lbfgs",
            "seed=0,1",
            "hydra.sweep.dir={root}/outputs/sweep",
        ],
        "optimizer=lbfgs decides its line search from each process's own loss, so 2",
    ),
    (
        "slurm members without tasks",
        [
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.gpus_per_node=0",
            "seed=0,1",
            "hydra.sweep.dir={root}/outputs/sweep",
        ],
        "hydra.launcher.tasks_per_node=0 and hydra.launcher.nodes=1 must be whole numbers",
    ),
    ("--cfg with -m", ["-m", "seed=0,1", "--cfg", "hydra"], "--cfg shows one run's config"),
    (
        "empty sweep",
        ["-m", "seed=range(3,0)", "hydra.sweep.dir={root}/outputs/sweep"],
        "the sweep has no members",
    ),
]
if not torch.cuda.is_available():
    CASES.append(
        ("cuda on a machine without", ["device=cuda"], "device=cuda but torch sees no CUDA GPU")
    )


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _copy_run(root: Path, name: str) -> Path:
    target = root / "outputs" / name
    shutil.copytree(root / FINISHED, target)
    return target


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder with one finished run and the broken inputs the cases point at."""
    root = tmp_path_factory.mktemp("bad-input")
    result = run_cli(*TINY, f"hydra.run.dir={root / FINISHED}", cwd=root)
    assert result.returncode == 0, result.stderr
    write_idx_dataset(root / "corrupt" / "MNIST" / "raw", train=60, test=20, gzipped=False)
    images = root / "corrupt" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])  # cut short, as by a failed copy
    (root / "a-file").write_text("not a folder\n")
    checkpoint = (root / FINISHED / "checkpoint.pt").read_bytes()
    (_copy_run(root, "corrupt-ckpt") / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    (_copy_run(root, "truncated-ckpt") / "checkpoint.pt").write_bytes(
        checkpoint[: len(checkpoint) // 2]
    )
    torch.save({"weights": torch.zeros(3)}, _copy_run(root, "foreign-ckpt") / "checkpoint.pt")
    other = root / "outputs" / "other-model"
    result = run_cli(*TINY, "model=linear", f"hydra.run.dir={other}", cwd=root)
    assert result.returncode == 0, result.stderr
    shutil.copy(other / "checkpoint.pt", _copy_run(root, "mismatched-ckpt") / "checkpoint.pt")
    busy = root / "outputs" / "busy"  # as a live run leaves it: this very process runs it
    busy.mkdir()
    (busy / "metrics.json").write_text(
        json.dumps({"status": "running", "pid": os.getpid(), "host": socket.gethostname()})
    )
    return root


@pytest.fixture(scope="module")
def results(workspace):
    """Every case run through the real CLI, a few at a time."""
    before = _fingerprint(workspace / "outputs")

    def one(case):
        args = [a.replace("{root}", str(workspace)) for a in case[1]]
        flags = [a for a in args if a == "-m"]  # Hydra wants its flags before the overrides
        rest = [a for a in args if a != "-m"]
        return run_cli(*flags, *TINY[:3], *rest, cwd=workspace)  # the case has the last word

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = dict(zip([c[0] for c in CASES], pool.map(one, CASES), strict=True))
    return outcomes, before, _fingerprint(workspace / "outputs")


@pytest.mark.parametrize(("name", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_clear_line(results, name, args, message):
    outcomes, _, _ = results
    result = outcomes[name]
    assert result.returncode == 2, (result.returncode, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("trainlab: error: "), result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_bad_input_overwrites_nothing(results, workspace):
    _, before, after = results
    changed = {path for path in before if before[path] != after.get(path)}
    assert not changed, changed
    new_folders = {p.name for p in (workspace / "outputs").iterdir()} - {
        "finished", "other-model", "corrupt-ckpt", "truncated-ckpt", "foreign-ckpt",
        "mismatched-ckpt", "runs", "busy",
    }  # fmt: skip
    assert not new_folders, new_folders
    assert not (workspace / "outputs" / "sweep").exists()
    assert not (workspace / "trainlab.log").exists()
    # Only the two runs whose data was missing or corrupt started, and they say they failed.
    started = [path.parent for path in (workspace / "outputs" / "runs").rglob("metrics.json")]
    assert len(started) == 2, started
    assert {json.loads((p / "metrics.json").read_text())["status"] for p in started} == {"failed"}
    folders = [p for p in (workspace / "outputs" / "runs").rglob("*") if p.is_dir()]
    assert len(folders) == 5, folders  # the day, the two runs and their .hydra: nothing empty


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_checkpoint(tmp_path):
    """A file-size limit makes every write past it fail, as a full disk does."""
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, "epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0
    checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    limit = 4096  # smaller than a checkpoint, larger than metrics.json

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = subprocess.run(
        [sys.executable, "-m", "trainlab", f"resume={run_dir}", "epochs=4"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, preexec_fn=small_files,
    )  # fmt: skip
    assert full.returncode == 2, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("trainlab: error: cannot write ") and "free some disk space" in last
    assert "Traceback" not in full.stderr
    assert (run_dir / "checkpoint.pt").read_bytes() == checkpoint  # the old one, intact
    assert not list(run_dir.glob(".*.tmp"))


def test_a_batch_larger_than_the_training_set_trains_full_batch_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, "batch_size=100000", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "batch_size=100000 exceeds the 256 training examples: full batch" in result.stdout
    assert '"batch_size": 256' in (run_dir / "metrics.json").read_text()
