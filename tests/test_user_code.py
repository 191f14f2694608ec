"""A user's own model, loss and config files: found by ``_target_`` and ``--config-dir``, sized
from the data, checked in one line where the config is wrong, and trained, swept and resumed
like the built-ins (the worked example in examples/own_project)."""

from __future__ import annotations

import json
import logging
import textwrap

import pytest
import torch
from torch import nn

from tests.helpers import REPO, compose_config, run_cli, train_run
from tests.test_resume import assert_same_run
from trainlab.data import describe_dataset
from trainlab.errors import ConfigError
from trainlab.project_dirs import code_folders, config_dir_as_searchpath
from trainlab.user_code import build_user_loss, build_user_model, locate

EXAMPLE = REPO / "examples" / "own_project"
SPEC = describe_dataset(dict(compose_config().dataset))  # synthetic: 8 features, 3 classes


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write ``name.py`` into a folder on the import path; returns a writer."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))

    return write


def test_a_target_that_cannot_be_found_is_one_line_naming_the_module(user_module):
    user_module("parts_a", "class WideNet: pass\n")
    with pytest.raises(ConfigError, match=r"no module 'nowhere' can be imported; run trainlab"):
        locate("nowhere.Net", "model")
    with pytest.raises(ConfigError, match=r"parts_a has no 'WideNt'; did you mean WideNet\?"):
        locate("parts_a.WideNt", "model")
    with pytest.raises(ConfigError, match=r"must be module\.name"):
        locate("WideNet", "model")
    assert locate("torch.nn.Linear", "model") is nn.Linear  # a class inside a package


def test_an_error_inside_the_users_code_keeps_its_own_traceback(user_module):
    user_module("parts_b", "import no_such_dependency\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):  # their import, not ours
        locate("parts_b.Net", "model")
    user_module("parts_c", """
        from torch import nn
        class Net(nn.Module):
            def __init__(self, output_size):
                raise ValueError("my bug")
    """)  # fmt: skip
    with pytest.raises(ValueError, match="my bug") as error:
        build_user_model({"name": "mine", "_target_": "parts_c.Net"}, SPEC)
    assert any("parts_c.py" in str(entry.path) for entry in error.traceback)


def test_a_user_model_is_sized_from_the_data_through_the_arguments_it_names(user_module):
    user_module("parts_d", """
        import math
        from torch import nn
        class Named(nn.Module):
            def __init__(self, input_shape, output_size, width=4):
                super().__init__()
                self.layer = nn.Linear(math.prod(input_shape), output_size)
                self.width = width
        class Anything(nn.Module):
            def __init__(self, **kwargs):
                super().__init__()
                self.seen = kwargs
        def not_a_module(output_size):
            return 3
    """)  # fmt: skip
    model = build_user_model({"name": "n", "_target_": "parts_d.Named", "width": 9}, SPEC)
    assert model.layer.in_features == 8 and model.layer.out_features == 3 and model.width == 9
    model = build_user_model({"name": "a", "_target_": "parts_d.Anything", "extra": [1, 2]}, SPEC)
    assert model.seen == {"input_shape": (8,), "output_size": 3, "task": "classification",
                          "num_classes": 3, "extra": [1, 2]}  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"model.widht is not a setting here \(known settings: width"
    ):
        build_user_model({"name": "n", "_target_": "parts_d.Named", "widht": 9}, SPEC)
    with pytest.raises(ConfigError, match=r"gave 'int', not a torch\.nn\.Module"):
        build_user_model({"name": "x", "_target_": "parts_d.not_a_module"}, SPEC)


def test_a_user_loss_takes_its_settings_and_says_which_tasks_it_fits(user_module, caplog):
    user_module("parts_e", """
        import torch.nn.functional as F
        def scaled(outputs, targets, scale=1.0):
            return scale * F.cross_entropy(outputs, targets)
        scaled.tasks = ("classification",)
        def untold(outputs, targets):
            return F.cross_entropy(outputs, targets)
    """)  # fmt: skip
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    loss = build_user_loss({"name": "s", "_target_": "parts_e.scaled", "scale": 3.0}, SPEC)
    assert loss(logits, labels) == pytest.approx(
        3 * float(nn.functional.cross_entropy(logits, labels))
    )
    regression = describe_dataset(dict(compose_config("dataset.task=regression").dataset))
    with pytest.raises(ConfigError, match="fits classification, not the regression task"):
        build_user_loss({"name": "s", "_target_": "parts_e.scaled"}, regression)
    with caplog.at_level(logging.WARNING, logger="trainlab"):
        build_user_loss({"name": "u", "_target_": "parts_e.untold", "tasks": None}, SPEC)
    assert "declares no tasks; trusting it on the classification task" in caplog.text
    huber = build_user_loss({"name": "h", "_target_": "torch.nn.HuberLoss", "delta": 0.5}, SPEC)
    assert isinstance(huber, nn.HuberLoss) and huber.delta == 0.5  # a class: an instance


def test_config_dir_becomes_one_search_path_for_help_preflight_and_hydra(tmp_path):
    argv = ["trainlab", "--config-dir", str(EXAMPLE / "conf"), "-m", "loss=focal"]
    config_dir_as_searchpath(argv)
    assert argv == [
        "trainlab",
        "-m",
        "loss=focal",
        f"hydra.searchpath=['file://{EXAMPLE / 'conf'}']",
    ]
    assert EXAMPLE in code_folders(argv)  # the project's .py files sit beside its conf/
    from trainlab.cli import app_help

    listing = app_help(["--help", argv[-1]])
    assert "resmlp" in listing.split("model: ", 1)[1].split("\n")[0]
    assert "focal" in listing.split("loss: ", 1)[1].split("\n")[0]
    assert "wine_losses" in listing.split("experiment: ", 1)[1].split("\n")[0]
    with pytest.raises(Exception, match="--config-dir nowhere: no such folder"):
        config_dir_as_searchpath(["trainlab", "--config-dir=nowhere"])


def test_a_config_folder_may_have_any_name_and_its_code_comes_first(tmp_path, monkeypatch):
    """Commas, quotes, = and brackets in the folder's name reach Hydra whole; the project's own
    modules win over installed ones of the same name (as they do in child processes)."""
    import sys

    from trainlab.cli import app_help
    from trainlab.project_dirs import add_code_folders

    project = tmp_path / "a,b'c=[1]"
    (project / "conf" / "model").mkdir(parents=True)
    (project / "conf" / "model" / "tiny.yaml").write_text("name: tiny\n_target_: profile.Net\n")
    (project / "profile.py").write_text("NET = 1\n")  # shadows the standard library's profile
    argv = ["trainlab", "-cd", str(project / "conf"), "model=tiny"]
    config_dir_as_searchpath(argv)
    assert "tiny" in app_help(["--help", argv[-1]]).split("model: ", 1)[1].split("\n")[0]
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.delitem(sys.modules, "profile", raising=False)
    add_code_folders(argv)
    assert locate("profile.NET", "model") == 1
    with pytest.raises(ConfigError, match=r"must be module\.name"):
        locate("profile.NET.", "model")


def _example_config(*overrides: str):
    return compose_config(
        f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]", "dataset=wine", "model=resmlp",
        "loss=focal", f"dataset.path={EXAMPLE / 'data' / 'wine.csv'}", "cpu_threads=1",
        "early_stopping.enabled=false", *overrides,
    )  # fmt: skip


def test_the_examples_own_model_and_loss_resume_exactly(tmp_path, monkeypatch):
    pytest.importorskip("pandas")  # the example's data is a table (the tables extra)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    config = _example_config(f"dataset.root={tmp_path / 'data'}", "epochs=3")
    train_run(config, tmp_path / "whole")
    polls = iter(range(1000))
    stopped = train_run(config, tmp_path / "cut", stop_requested=lambda: next(polls) == 6)
    assert stopped["status"] == "interrupted"
    resumed = train_run(config, tmp_path / "cut", resume=True)
    assert resumed["status"] == "completed" and resumed["test"]["accuracy"] > 0.8
    assert_same_run(tmp_path / "cut", tmp_path / "whole")


def test_the_worked_example_runs_as_its_readme_says(tmp_path):
    """The README's example sweep, in the example's folder: its own data, model, loss and preset
    found through --config-dir, four members that all learn the wine data."""
    pytest.importorskip("pandas")  # the example's data is a table (the tables extra)
    result = run_cli(
        "--config-dir", "conf", "-m", "+experiment=wine_losses", "epochs=12",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", f"dataset.root={tmp_path / 'data'}",
        cwd=EXAMPLE, as_given=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    members = {
        p.parent.name: json.loads(p.read_text())
        for p in (tmp_path / "sweep").glob("*/metrics.json")
    }
    assert sorted(members) == [
        "loss=cross_entropy,optimizer.lr=0.001", "loss=cross_entropy,optimizer.lr=0.003",
        "loss=focal,optimizer.lr=0.001", "loss=focal,optimizer.lr=0.003",
    ]  # fmt: skip
    for name, metrics in members.items():
        assert metrics["test"]["accuracy"] >= 0.85, (name, metrics["test"])


def test_an_option_file_without_a_name_says_so(tmp_path):
    from trainlab.experiment import check_complete

    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "noname.yaml").write_text("_target_: my_losses.focal_loss\n")
    config = compose_config(f"hydra.searchpath=['file://{tmp_path}']", "loss=noname")
    with pytest.raises(ConfigError, match="the chosen loss option's file has no name: line"):
        check_complete(config)


def test_suggested_commands_name_the_config_folder_as_the_user_typed_it():
    from trainlab.project_dirs import as_typed

    argv = ["trainlab", "--config-dir", str(EXAMPLE / "conf")]
    config_dir_as_searchpath(argv)
    assert as_typed(["hydra.mode=RUN", argv[-1]]) == [f"--config-dir {EXAMPLE / 'conf'}"]
    assert as_typed(["hydra.searchpath=[pkg://mine.conf]"]) == [
        "'hydra.searchpath=[pkg://mine.conf]'"
    ]
