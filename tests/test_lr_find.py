"""The learning-rate range test (mode=lr_find): its ramp, its rule, its files, and that a probe
is never taken for a run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tests.helpers import compose_config, train_run
from trainlab.errors import UserError
from trainlab.lr_find import STEEPEST, TENTH_OF_MINIMUM, Curve, ProbeSettings, lr_at, probe
from trainlab.run_folder import action_for, look


def test_the_lr_ramps_exponentially_from_min_to_max():
    settings = ProbeSettings(min_lr=1e-6, max_lr=1.0, steps=7)
    lrs = [lr_at(step, settings) for step in range(7)]
    assert lrs == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def _curve(losses: list[float]) -> Curve:
    settings = ProbeSettings(min_lr=1e-5, max_lr=1.0, steps=len(losses))
    lrs = [lr_at(step, settings) for step in range(len(losses))]
    return Curve(lrs, losses, losses)


def test_the_suggestion_is_where_the_loss_falls_fastest_before_its_minimum():
    # 41 points over 5 decades: flat at 2, a fall centred on 1e-3 (step 16), a floor, a blow-up.
    losses = [1 + 1 / (1 + math.exp(step - 16)) for step in range(30)]
    losses += [1.0 + 0.5 * (step - 29) ** 2 for step in range(30, 41)]
    lr, rule = _curve(losses).suggestion()
    assert rule == STEEPEST and lr == pytest.approx(1e-3)
    assert _curve([1.0, 2.0, 4.0, 8.0]).suggestion() == (pytest.approx(1e-6), TENTH_OF_MINIMUM)
    assert Curve().suggestion()[0] is None


def test_the_probe_stops_once_the_loss_runs_away():
    """Least squares with SGD diverges above lr = 2 / (largest curvature): the probe must see
    the loss fall, then stop once its smoothed value passes 4x its best."""
    torch.manual_seed(0)
    inputs = torch.randn(256, 4)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(256)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = list(zip(inputs.split(32), targets.unsqueeze(1).split(32), strict=True))
    settings = ProbeSettings(min_lr=1e-4, max_lr=100.0, steps=120, smoothing=0.8)
    curve = probe(model, nn.functional.mse_loss, optimizer, None, batches, settings)
    assert curve.stopped_early and len(curve.lrs) < 120
    assert min(curve.smoothed) < 0.5 * curve.smoothed[0]  # it learnt on the way
    suggested, rule = curve.suggestion()
    assert rule == STEEPEST and 1e-2 < suggested < 1.0  # curvature ~ 2: diverges above ~1


def test_a_stop_request_ends_the_probe_with_the_curve_so_far():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = [(torch.randn(8, 2), torch.randn(8, 1))]
    polls = iter(range(1000))
    curve = probe(
        model, nn.functional.mse_loss, optimizer, None, batches, ProbeSettings(steps=50),
        stop_requested=lambda: next(polls) == 9,
    )  # fmt: skip
    assert curve.stopped_on_request and not curve.stopped_early and len(curve.lrs) == 10


def test_a_probe_run_writes_its_curve_suggestion_and_command_and_no_checkpoint(tmp_path):
    config = compose_config(
        "mode=lr_find", "dataset.train_size=512", "lr_find.steps=40", "loss=huber"
    )
    run_dir = tmp_path / "probe"
    overrides = ["mode=lr_find", "loss=huber", "optimizer.lr=0.5", "lr_find.steps=40"]
    metrics = train_run(config, run_dir, overrides=overrides)
    assert metrics["kind"] == "lr_find" and metrics["status"] == "completed"
    assert 1e-6 <= metrics["suggested_lr"] <= 10
    lr = float(f"{metrics['suggested_lr']:.3g}")
    assert metrics["command"] == f"trainlab loss=huber optimizer.lr={lr}"  # no mode, no old lr
    assert len(metrics["curve"]["lr"]) == metrics["steps"] <= 40
    assert (run_dir / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run_dir / "checkpoint.pt").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["kind"] == "lr_find"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert {"lr_find/loss", "lr_find/smoothed_loss", "lr_find/lr"} <= set(events.Tags()["scalars"])
    # A probe is not a run: resume= refuses it, a single run does not overwrite it.
    with pytest.raises(UserError, match="holds a learning-rate probe"):
        action_for(look(run_dir), run_dir, resume=True, multirun=False)
    with pytest.raises(UserError, match="already holds a learning-rate probe"):
        action_for(look(run_dir), run_dir, resume=False, multirun=False)
    assert action_for(look(run_dir), run_dir, resume=False, multirun=True) == "done"


def test_the_report_lists_probes_apart_and_never_ranks_them(tmp_path, capsys):
    from trainlab.report import report

    for loss, lr in (("mse", 7e-4), ("huber", 2e-3)):
        run_dir = tmp_path / f"loss={loss}"
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(f"- loss={loss}\n- mode=lr_find\n")
        probe_metrics = {
            "kind": "lr_find", "status": "completed", "suggested_lr": lr, "rule": STEEPEST,
            "command": f"trainlab loss={loss} optimizer.lr={lr}",
        }  # fmt: skip
        (run_dir / "metrics.json").write_text(json.dumps(probe_metrics))
    assert report(tmp_path) == []  # nothing to rank
    out = capsys.readouterr().out
    assert "trainlab loss=huber optimizer.lr=0.002" in out and "0.0007" in out
    rows = (tmp_path / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "probe,loss,status,suggested_lr,rule,command" and len(rows) == 3
    assert not (tmp_path / "summary.csv").exists()


def test_a_sweep_of_probes_ends_with_their_suggestions_not_a_ranking(tmp_path, capsys):
    from omegaconf import OmegaConf

    from trainlab.sweep import SweepSummary

    for loss, lr in (("mse", 7e-4), ("cross_entropy", 0.027)):
        run_dir = tmp_path / f"loss={loss}"
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(f"- loss={loss}\n")
        probe_metrics = {
            "kind": "lr_find", "status": "completed", "suggested_lr": lr,
            "command": f"trainlab loss={loss} optimizer.lr={lr}",
        }  # fmt: skip
        (run_dir / "metrics.json").write_text(json.dumps(probe_metrics))
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    out = capsys.readouterr().out
    assert "learning-rate range tests" in out and "ranked by" not in out
    assert "trainlab loss=cross_entropy optimizer.lr=0.027" in out
    assert not any(tmp_path.glob("events.out.tfevents.*"))  # no HParams view of probes
