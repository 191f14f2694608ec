"""Resume: what may change when a run continues, and checkpoint <-> live objects.

This is the one place that says what a resume may change (:data:`CHANGEABLE_ON_RESUME`) and
whether a checkpoint fits the run (:func:`check_resumable`); the file format is
``trainlab.checkpoint``'s, and only the run folder writes the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab.checkpoint import CheckpointError, restore_rng_states, rng_states
from trainlab.config_keys import RUNTIME_ONLY, differences, override_key, sets_a_value
from trainlab.distributed import Processes, gather
from trainlab.engine import FitState
from trainlab.errors import UserError
from trainlab.optim import LRSchedule

# What a resume may change: none of them alters the numbers already computed.
CHANGEABLE_ON_RESUME = (
    "epochs",
    "cpu_threads",
    "checkpoint.every_steps",
    "fused.max_members",
    "fused.checkpoint_seconds",
    "report.metric",
    "report.why",
)
FINISHED = ("completed", "early_stopped", "diverged")


def _keys_set(overrides: list[str]) -> list[str]:
    return [
        override_key(o).replace("/", ".")
        for o in overrides
        if sets_a_value(o)
        and not override_key(o).startswith("hydra.")
        and override_key(o) != "resume"
    ]


def _compared(given: Any, saved: Any) -> tuple[Any, Any] | None:
    """The two values as the user knows them (an option's name for a group), or None when equal."""
    if isinstance(given, DictConfig):  # a group: compare the whole option
        given_plain = OmegaConf.to_container(given, resolve=True)
        saved_plain = OmegaConf.to_container(saved, resolve=True) if saved else None
        if given_plain == saved_plain:
            return None
        return given_plain.get("name", given_plain), (saved_plain or {}).get("name", saved_plain)
    return None if given == saved else (given, saved)


def config_for_resume(
    saved: DictConfig, given: DictConfig, overrides: list[str], run_dir: Path
) -> DictConfig:
    """The saved config, with the changeable keys the command line set; refuse any other change."""
    changed = []
    merged = OmegaConf.create(OmegaConf.to_container(saved, resolve=True))
    added = [key for key in given if key not in merged]  # settings new since the run was made
    if added:  # take their defaults
        defaults = OmegaConf.to_container(given, resolve=True)
        for key in added:
            merged[key] = defaults[key]
    for key in _keys_set(overrides):
        if key == "experiment":
            changed.append("+experiment (a preset cannot change a run that exists)")
            continue
        values = _compared(
            OmegaConf.select(given, key, default=None), OmegaConf.select(saved, key, default=None)
        )
        if values is None:
            continue
        if key in CHANGEABLE_ON_RESUME:
            OmegaConf.update(merged, key, values[0])
        else:
            changed.append(f"{key} (run has {values[1]}, given {values[0]})")
    if changed:
        raise UserError(
            f"resume={run_dir} continues the run with its own config, but the command line "
            f"changes {'; '.join(changed)}: drop those overrides, or start a new run (a resume "
            f"may change only {', '.join(CHANGEABLE_ON_RESUME)})"
        )
    merged.resume = None
    return merged


def check_resumable(
    saved: dict[str, Any],
    config: Mapping[str, Any],
    model: torch.nn.Module,
    schedule: LRSchedule,
    processes: Processes,
    previous: Mapping[str, Any],
    path: Path,
) -> None:
    """Refuse a checkpoint written for another experiment, or one with nothing left to do; load
    its weights into ``model`` (which checks them)."""
    changed = differences(saved["config"], config, ignore=(*CHANGEABLE_ON_RESUME, *RUNTIME_ONLY))
    if changed:
        raise CheckpointError(
            f"{path} was written for another experiment: {'; '.join(changed[:4])}; resume it "
            "with its own run folder's config or start a new run"
        )
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"{path} holds weights for another model ({str(error).splitlines()[-1].strip()}); "
            "resume it with the config it was written for"
        ) from None
    written_by = len(saved["processes"]) or 1
    if written_by != processes.world:
        raise CheckpointError(
            f"{path} was written by {written_by} process(es), and this resume has "
            f"{processes.world}; resume with the same torchrun --nproc-per-node"
        )
    _check_epochs(saved, config["epochs"], schedule, previous, path, config["schedule"]["name"])


def _check_epochs(
    saved: dict[str, Any],
    epochs: int,
    schedule: LRSchedule,
    previous: Mapping[str, Any],
    path: Path,
    schedule_name: str,
) -> None:
    """A resume continues what is left, or extends a finished run by more epochs."""
    # A run killed after its last checkpoint but before writing its results still needs them:
    # only metrics.json says whether it truly finished.
    finished = previous.get("status") in FINISHED
    planned = saved["config"]["epochs"]
    if epochs < planned:
        raise UserError(
            f"epochs={epochs} but the run in {path.parent} was planned for {planned}; a resume "
            f"can only extend it (epochs >= {planned})"
        )
    extending = epochs > planned
    status = saved["engine"]["status"]
    if status != "completed" and (finished or extending):
        raise UserError(f"the run in {path.parent} already ended ({status}); nothing to resume")
    if finished and not extending:
        raise UserError(
            f"the run in {path.parent} has finished all its {epochs} epochs; to train it further "
            f"resume with a larger epochs=..."
        )
    if schedule.sized_by_plan and extending:
        raise UserError(
            f"schedule={schedule_name} is shaped by the run's length, so epochs cannot change on "
            "resume; start a new run with the longer schedule"
        )


def checkpoint_parts(
    config: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    loader: Any,
    state: FitState,
    processes: Processes,
) -> dict[str, Any]:
    """Everything a resume needs, every process's random streams, data order and running sums
    included (a collective: every process calls it at the same step)."""
    own = {"rng": rng_states(), "loader": loader.state_dict(), "sums": state.sums}
    every = gather(own, processes)
    return {
        "config": dict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.scheduler.state_dict(),
        "loader": own["loader"],
        "engine": state.state_dict(),
        "rng": own["rng"],
        "processes": every if processes.parallel else [],
    }


def restore(
    saved: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    loader: Any,
    device: torch.device,
    processes: Processes,
) -> FitState:
    """Put the checkpoint's optimizer, schedule, data order and random streams back; the engine
    state to continue from. (The weights were loaded by :func:`check_resumable`.)"""
    own = saved["processes"][processes.rank] if processes.parallel else saved
    optimizer.load_state_dict(saved["optimizer"])
    schedule.scheduler.load_state_dict(saved["schedule"])
    loader.load_state_dict(own["loader"])
    state = FitState.from_state_dict(saved["engine"], device)
    if processes.parallel:
        state.sums = own["sums"].to(device)
    restore_rng_states(own["rng"])
    return state
