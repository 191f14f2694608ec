"""The bad-input catalogue: every mistake a user can make on the command line ends in one
clear line naming the problem and the fix, a non-zero exit, no traceback, and nothing
overwritten: a finished run beside it stays byte for byte as it was."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import TINY, run_cli
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
    ("a report metric of no split", ["report.metric=mse"], "report.metric must be null or val_"),
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
    ("resume of nothing", ["resume="], "resume= is empty; give the folder of the run"),
    (
        "resume with damaged overrides",
        ["resume={root}/outputs/damaged-overrides", "epochs=5"],
        "overrides.yaml is unreadable",
    ),
    (
        "a run folder in /proc",
        ["hydra.run.dir=/proc/trainlab-run"],
        "(/proc is on a file system of the kernel's, which holds no files)",
    ),
    (
        "run folder in use",
        ["hydra.run.dir={root}/outputs/busy"],
        "is in use by another trainlab process right now",
    ),
    ("run resumed while in use", ["resume={root}/outputs/busy"], "is in use by another trainlab"),
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
    ("--cfg with -m", ["-m", "seed=0,1", "--cfg", "hydra"], "--cfg shows one run's config"),
    (
        "empty sweep",
        ["-m", "seed=range(3,0)", "hydra.sweep.dir={root}/outputs/sweep"],
        "the sweep has no members",
    ),
]
# Found in use: a key twice, a deleted setting, overrides Hydra cannot read, paths the
# operating system refuses, values torch cannot hold, the sweep plugins' own settings.
CASES += [
    ("a key given twice", ["seed=1", "seed=2"], "seed is given 2 times (seed=1, seed=2)"),
    (
        "a swept key given twice",
        ["-m", "seed=0,1", "seed=2,3", "hydra.sweep.dir={root}/outputs/sweep"],
        "seed is given 2 times",
    ),
    ("a setting deleted", ["~optimizer.lr"], "~optimizer.lr deletes a setting"),
    ("unicode digits", ["optimizer.lr=\uff11e-3"], "quote a value"),
    ("a semicolon", ["loss=mse;rm"], "quote a value"),
    ("a shell substitution", ["loss=$(ls)"], "quote a value"),
    ("a preset without +", ["experiment=lr_sweep"], "chosen with a +: +experiment=lr_sweep"),
    ("an lr torch cannot hold", ["optimizer=sgd", "optimizer.lr=1e300"], "too large for torch"),
    ("a run folder name too long", ["hydra.run.dir={root}/" + "x" * 300], "use a shorter path"),
    ("a resume folder name too long", ["resume={root}/" + "z" * 300], "use a shorter path"),
    (
        "a data folder name too long",
        ["dataset=mnist", "dataset.root={root}/" + "y" * 300, "dataset.download=false"],
        "use a shorter path",
    ),
    ("a run folder that is a file", ["hydra.run.dir={root}/a-file"], "is a file, not a folder"),
    ("a resume of a file", ["resume={root}/a-file"], "is a file, not a run folder"),
    (
        "a data folder that is a file",
        ["dataset=mnist", "dataset.root={root}/a-file", "dataset.download=false"],
        "a-file is a file, not a folder; point dataset.root at the folder",
    ),
    (
        "a metrics.json that is a folder",
        ["hydra.run.dir={root}/outputs/metrics-folder"],
        "metrics-folder/metrics.json cannot be read",
    ),
    (
        "an unreadable metrics.json, same command",
        ["hydra.run.dir={root}/outputs/truncated-metrics"],
        "truncated-metrics/metrics.json cannot be read",
    ),
    (
        "an unreadable metrics.json, resumed",
        ["resume={root}/outputs/truncated-metrics"],
        "changes nothing there",
    ),
    (
        "a launcher of the sweep extra, without it",
        ["-m", "hydra/launcher=joblib", "seed=0,1"],
        "pip install -e '.[sweep]'",
    )
    if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None
    else (
        "a launcher of the sweep extra, without it",
        ["-m", "hydra/launcher=jobli", "seed=0,1"],
        "did you mean joblib?",
    ),
    (
        "a basic sweep batch of -1",
        [
            "-m",
            "hydra.sweeper.max_batch_size=-1",
            "seed=0,1",
            "hydra.sweep.dir={root}/outputs/sweep",
        ],
        "hydra.sweeper.max_batch_size must be null or a whole number >= 1, got -1",
    ),
]
if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    CASES += [
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
    ]
if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None:
    CASES.append(
        (
            "joblib with no jobs",
            [
                "-m",
                "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=0",
                "seed=0,1",
                "hydra.sweep.dir={root}/outputs/sweep",
            ],
            "hydra.launcher.n_jobs must be a whole number >= 1",
        )
    )
if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
    CASES.append(
        (
            "optuna with no trials",
            [
                "-m",
                "+experiment=optuna_search",
                "hydra.sweeper.n_trials=0",
                "hydra.sweep.dir={root}/outputs/sweep",
            ],
            "hydra.sweeper.n_trials must be a whole number >= 1, got 0",
        )
    )
# A user's own data, found wrong in the preflight of a whole sweep (the cases' files are made by
# the workspace fixture): nothing runs, no member folder and no cache is written.
TABLES = importlib.util.find_spec("pandas") is not None  # the tables extra
CASES += [
    (
        "a sweep naming a missing table column",
        ["-m", "dataset=table", "dataset.path={root}/own/table.csv", "dataset.target=y,yy",
         "dataset.root={root}/own/cache", "hydra.sweep.dir={root}/outputs/sweep"],
        "dataset.target: no column 'yy' in the table; did you mean y?",
    ),
    (
        "an unreadable image in an image folder",
        ["dataset=image_folder", "dataset.path={root}/own/images", "model=cnn",
         "dataset.root={root}/own/image-cache"],
        "cannot read",
    ),
]  # fmt: skip
if not TABLES:
    CASES = [case for case in CASES if case[0] != "a sweep naming a missing table column"]
# Run as given: the others get the test's small data sizes first (the case has the last word).
AS_GIVEN = {
    "a key given twice", "a swept key given twice", "a sweep naming a missing table column",
    "an unreadable image in an image folder",
}  # fmt: skip
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


def _write_own_data(folder: Path) -> None:
    """A small table, and an image folder with one file that is no image."""
    folder.mkdir()
    rows = "\n".join(f"{i * 0.5},{i % 2}" for i in range(40))
    (folder / "table.csv").write_text(f"x,y\n{rows}\n")
    for label in ("a", "b"):
        (folder / "images" / label).mkdir(parents=True)
        for index in range(6):
            grey = Image.new("L", (8, 8), color=40 * index)
            grey.save(folder / "images" / label / f"{index}.png")
    (folder / "images" / "b" / "broken.png").write_bytes(b"\x89PNG not really")


def _copy_run(root: Path, name: str) -> Path:
    target = root / "outputs" / name
    shutil.copytree(root / FINISHED, target)
    return target


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Iterator[Path]:
    """A folder with one finished run and the broken inputs the cases point at."""
    root = tmp_path_factory.mktemp("bad-input")
    result = run_cli(*TINY, f"hydra.run.dir={root / FINISHED}", cwd=root)
    assert result.returncode == 0, result.stderr
    write_idx_dataset(root / "corrupt" / "MNIST" / "raw", train=60, test=20, gzipped=False)
    _write_own_data(root / "own")
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
    (_copy_run(root, "truncated-metrics") / "metrics.json").write_text('{"status": "comp')
    (_copy_run(root, "damaged-overrides") / ".hydra" / "overrides.yaml").write_text("{{{")
    folder_instead = _copy_run(root, "metrics-folder")
    (folder_instead / "metrics.json").unlink()
    (folder_instead / "metrics.json").mkdir()
    busy = _copy_run(root, "busy")  # a run this very process holds, as a live run does
    (busy / "metrics.json").write_text(json.dumps({"status": "running"}))
    descriptor = os.open(busy / ".trainlab.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    yield root
    os.close(descriptor)


@pytest.fixture(scope="module")
def results(workspace):
    """Every case run through the real CLI, a few at a time."""
    before = _fingerprint(workspace / "outputs")

    def one(case):
        args = [a.replace("{root}", str(workspace)) for a in case[1]]
        if case[0] in AS_GIVEN:
            return run_cli(*args, cwd=workspace, as_given=True)
        return run_cli(*TINY[:3], *args, cwd=workspace)

    def in_turn(cases):  # the cases of one folder, one after another (it takes one at a time)
        return [(case[0], one(case)) for case in cases]

    by_folder: dict[str, list] = {}
    for case in CASES:
        claimed = [a.split("=", 1)[1] for a in case[1] if a.startswith(("resume=", "hydra."))]
        by_folder.setdefault(claimed[0] if claimed else case[0], []).append(case)
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = dict(pair for group in pool.map(in_turn, by_folder.values()) for pair in group)
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
        "mismatched-ckpt", "busy", "truncated-metrics", "metrics-folder", "damaged-overrides",
    }  # fmt: skip
    assert not new_folders, new_folders  # missing or corrupt data left no run folder either
    assert not (workspace / "outputs" / "sweep").exists()
    assert not (workspace / "own" / "image-cache").exists()  # bad data: no decoded cache either
    assert not (workspace / "trainlab.log").exists()
    busy_lock = workspace / "outputs" / "busy" / ".trainlab.lock"
    assert list(workspace.rglob(".trainlab.lock")) == [busy_lock]  # the one this test holds


def test_a_full_disk_while_extending_a_run_is_one_line_and_undoes_the_extension(tmp_path):
    """A file-size limit makes every write past it fail, as a full disk does: the extension
    fails at its first checkpoint, and the finished run is back, byte for byte."""
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, "epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0
    before = _fingerprint(run_dir)
    full = run_cli(
        f"resume={run_dir}", "epochs=4", cwd=tmp_path,
        driver={"file_size_limit": 4096},  # smaller than a checkpoint, larger than metrics.json
    )  # fmt: skip
    assert full.returncode == 2, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("trainlab: error: cannot write ") and "free some disk space" in last
    assert last.endswith(f"the extension was undone: {run_dir} holds the finished run as it was")
    assert "Traceback" not in full.stderr and "Logging error" not in full.stderr
    assert _fingerprint(run_dir) == before
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        {path.split("/")[0] for path in before}
    )  # nothing left behind: no lock, no kept copy, no temporary file


def test_a_batch_larger_than_the_training_set_trains_full_batch_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, "batch_size=100000", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "batch_size=100000 exceeds the 256 training examples: full batch" in result.stdout
    assert '"batch_size": 256' in (run_dir / "metrics.json").read_text()
