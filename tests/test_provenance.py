"""provenance.json: what produced a run, and a config hash that names the experiment."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

from tests.helpers import TINY, compose_config, train_run
from trainlab.provenance import config_hash

REPO = Path(__file__).resolve().parent.parent


def test_config_hash_names_the_experiment_not_where_it_runs():
    base = config_hash(compose_config(*TINY))
    assert base == config_hash(compose_config(*TINY))
    assert base != config_hash(compose_config(*TINY, "optimizer.lr=0.01"))
    assert base != config_hash(compose_config(*TINY, "seed=1"))
    mnist = config_hash(compose_config("dataset=mnist", "dataset.root=/a"))
    assert mnist == config_hash(
        compose_config("dataset=mnist", "dataset.root=/b", "dataset.download=false")
    )


def test_every_run_records_its_provenance(tmp_path):
    metrics = train_run(compose_config(*TINY), tmp_path, command=["trainlab", "epochs=3"])
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["command"] == ["trainlab", "epochs=3"]
    assert provenance["config_hash"] == metrics["config_hash"] == config_hash(compose_config(*TINY))
    assert provenance["versions"]["torch"] == metadata.version("torch")
    assert provenance["versions"]["hydra-core"] == metadata.version("hydra-core")
    assert provenance["hardware"]["cpu_cores"] >= 1 and provenance["host"]
    assert provenance["started_at"] == metrics["started_at"]
    assert provenance["finished_at"] == metrics["finished_at"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:  # running from a checkout
        assert provenance["code"]["commit"] == head.stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "diff", "HEAD", "--", "."], cwd=REPO, capture_output=True, text=True
            ).stdout
        )
        assert provenance["code"]["dirty"] is dirty
        assert (tmp_path / "git_diff.patch").exists() is dirty
