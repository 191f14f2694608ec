"""Which sweep members can train stacked (hydra/launcher=fused), and in which groups.

Members group when they share everything that shapes a step's arithmetic: the model's
architecture, the data, the batch size, the device and precision, and the optimizer's family
(SGD's or Adam's rules). They may differ in seed, lr and the other optimizer settings, lr
schedule, regularizer, loss, epochs, early stopping and evaluation. Members that cannot be
stacked faithfully run alone, one after another, and the plan line says why.

Plain config reading (no torch): the preflight prints the plan from it, and the launcher acts on
the same answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FAMILIES = {
    "gd": "sgd", "sgd": "sgd", "momentum": "sgd", "nesterov": "sgd",
    "adam": "adam", "adamw": "adam",
}  # fmt: skip
FUSED_LAUNCHER = "hydra_plugins.trainlab_launchers.fused.FusedLauncher"  # launcher/fused.yaml


def is_fused(launcher: Mapping[str, Any]) -> bool:
    """Whether the sweep's launcher trains members together."""
    return launcher.get("_target_") == FUSED_LAUNCHER


def why_alone(config: Mapping[str, Any]) -> str | None:
    """Why a member (its resolved task config) cannot train stacked, or None when it can."""
    model, loss, optimizer = config["model"], config["loss"], config["optimizer"]
    reasons = [
        (config["mode"] != "train", f"mode={config['mode']}"),
        (optimizer["name"] not in FAMILIES, f"optimizer={optimizer['name']}"),
        (config["accumulate_steps"] != 1, "accumulate_steps > 1"),
        (bool(config["compile"]), "compile=true"),
        ("_target_" in model, f"model={model['name']} (your own code)"),
        ("_target_" in loss, f"loss={loss['name']} (your own code)"),
        (bool(model.get("dropout")), "dropout"),  # its random draws are each member's own
        (bool(model.get("batch_norm")) or model["name"] == "resnet", "batch norm"),
        # stacked, convolutions take other kernels than a member's alone, and Adam's first
        # steps magnify the difference (scripts/bench_fused.py --sweeps cnn)
        (model["name"] == "cnn", "model=cnn"),
    ]
    return next((reason for wrong, reason in reasons if wrong), None)


def fusion_key(config: Mapping[str, Any]) -> str:
    """Members with equal keys can share a stack."""
    optimizer = config["optimizer"]
    shape = {
        "model": config["model"],
        "dataset": config["dataset"],
        "batch": "full" if optimizer.get("full_batch") else config["batch_size"],
        "family": FAMILIES[optimizer["name"]],
        **{key: config[key] for key in ("device", "precision", "channels_last", "cpu_threads")},
    }
    return json.dumps(shape, sort_keys=True, default=str)


@dataclass
class Grouping:
    """Members (by their index in the sweep) in groups, and those that run alone and why."""

    groups: list[list[int]] = field(default_factory=list)
    alone: dict[int, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``16 members: 1 group of 16``, then what runs alone and why."""
        total = sum(map(len, self.groups)) + len(self.alone)
        sizes = sorted((len(g) for g in self.groups), reverse=True)
        text = f"{total} member{'s' * (total != 1)}: "
        if sizes:
            counts = {size: sizes.count(size) for size in sizes}
            text += ", ".join(f"{n} group{'s' * (n != 1)} of {size}" for size, n in counts.items())
        else:
            text += "no group"
        if self.alone:
            reasons: dict[str, int] = {}
            for reason in self.alone.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            said = [
                reason if n == 1 else f"{reason} ({n} members)" for reason, n in reasons.items()
            ]
            text += f", {len(self.alone)} alone: {', '.join(said)}"
        return text


def group_members(
    configs: Sequence[Mapping[str, Any]], max_members: int, skipped: Sequence[int] = ()
) -> Grouping:
    """Group the members' resolved task configs; ``skipped`` members (finished ones) are in
    neither list. A group of one is a member alone."""
    grouping, by_key = Grouping(), {}
    for index, config in enumerate(configs):
        if index in skipped:
            continue
        reason = why_alone(config)
        if reason is not None:
            grouping.alone[index] = reason
            continue
        by_key.setdefault(fusion_key(config), []).append(index)
    for members in by_key.values():
        for start in range(0, len(members), max_members):
            chunk = members[start : start + max_members]
            if len(chunk) == 1:
                grouping.alone[chunk[0]] = "nothing to group with"
            else:
                grouping.groups.append(chunk)
    return grouping
