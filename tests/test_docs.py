"""README claims that code can check: the loss x task table and the CI test command."""

from __future__ import annotations

from pathlib import Path

from scripts.loss_task_table import loss_task_table

REPO = Path(__file__).resolve().parent.parent


def test_readme_loss_table_matches_the_registry():
    assert loss_task_table() in (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    test_command = readme.split("Run the tests:")[1].split("```bash\n")[1].split("\n")[0]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command == "python -m pytest"
    assert ci_lines[-1] == test_command


def test_every_config_option_has_code_and_every_registry_entry_a_config():
    from trainlab.data import DATASETS
    from trainlab.losses import LOSSES
    from trainlab.models import MODELS
    from trainlab.optim import OPTIMIZERS, SCHEDULES
    from trainlab.regularizers import REGULARIZERS

    registries = {
        "dataset": DATASETS,
        "model": MODELS,
        "loss": LOSSES,
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
        "regularizer": REGULARIZERS,
    }
    for group, registry in registries.items():
        files = {path.stem for path in (REPO / "conf" / group).glob("*.yaml")}
        assert files == set(registry), group
        for path in (REPO / "conf" / group).glob("*.yaml"):
            assert f"name: {path.stem}\n" in path.read_text(), path
