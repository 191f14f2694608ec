"""Dotted config keys: the key an override sets, nested configs as flat keys, and what differs.

Torch-free: the command-line checks, the run folder and trainlab-report all read keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# The config groups whose choices make up a run's recipe.
GROUPS = ("dataset", "model", "loss", "optimizer", "schedule", "regularizer")

# Keys that change where or how a run executes, never its numbers (not part of an experiment).
# How a sweep's launcher runs its members: not what a member is (no HParams column).
LAUNCHER_KEYS = ("fused", "members_per_gpu")
RUNTIME_ONLY = (
    "dataset.root", "dataset.download", "resume", "checkpoint", "cpu_threads", "members_per_gpu",
    "fused", "report",
)  # fmt: skip

# What Hydra reads as a plain value (a conservative subset: a sweep member's folder name holds
# = and , which Hydra reads as syntax).
_PLAIN_VALUE = re.compile(r"[\w/.\-]+")


def runtime_only(key: str) -> bool:
    """Whether a dotted key changes only where or how a run executes (``checkpoint.every_steps``
    too: a key below a runtime-only one)."""
    return key in RUNTIME_ONLY or key.split(".")[0] in RUNTIME_ONLY


def override_key(override: str) -> str:
    """``optimizer.lr`` for ``optimizer.lr=0.1``, ``++optimizer.lr=0.1`` or ``~optimizer.lr``."""
    return override.split("=", 1)[0].lstrip("+~")


def shell_override(key: str, value: object) -> str:
    """``key=value`` as a user types it in a shell for Hydra to read: quoted for Hydra, and
    that quoting kept from the shell, when the value holds characters Hydra reads as syntax."""
    text = str(value)
    if _PLAIN_VALUE.fullmatch(text):
        return f"{key}={text}"
    return f"\"{key}='" + text.replace("\\", "\\\\").replace("'", "\\'") + "'\""


def sets_a_value(override: str) -> bool:
    """Whether the override changes the config (``key=value``, ``+key=...``, ``~key``)."""
    return "=" in override or override.startswith("~")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer.lr": 0.01, ...}`` from nested mappings."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differences(
    saved: Mapping[str, Any], given: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
    """``key (run has X, given Y)`` for every key whose value differs, ``ignore`` aside."""
    ignored = tuple(ignore)
    old, new = flatten(saved), flatten(given)
    found = []
    for key in sorted(old.keys() | new.keys()):
        if any(key == name or key.startswith(f"{name}.") for name in ignored):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            found.append(
                f"{key} (run has {old.get(key, '<absent>')}, given {new.get(key, '<absent>')})"
            )
    return found
