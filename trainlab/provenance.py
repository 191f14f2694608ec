"""What produced a run: command line, config hash, code version, library versions, hardware.

Written to ``provenance.json`` in every run folder (with ``git_diff.patch`` when trainlab runs
from a checkout with uncommitted changes), so any number can be traced to exactly what made it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import trainlab
from trainlab.config_keys import RUNTIME_ONLY

# Keys that say where things are, not what the experiment is: left out of the config hash.
PACKAGES = ("trainlab", "torch", "torchvision", "hydra-core", "omegaconf", "tensorboard")


def config_hash(config: DictConfig) -> str:
    """SHA-256 (first 16 hex digits) of the resolved experiment config, runtime-only keys out."""
    plain = OmegaConf.to_container(config, resolve=True)
    plain.pop("hydra", None)
    for dotted in RUNTIME_ONLY:
        group, _, key = dotted.partition(".")
        if not key:
            plain.pop(group, None)
        elif isinstance(plain.get(group), dict):
            plain[group].pop(key, None)
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _git(*args: str, cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout


@functools.cache  # once per process: the code that runs is the code this process imported
def code_version(source: Path) -> dict[str, Any]:
    """trainlab's git commit and whether the checkout has uncommitted changes (with the diff)."""
    commit = _git("rev-parse", "HEAD", cwd=source)
    if commit is None:
        return {"commit": None, "dirty": None, "diff": ""}
    diff = _git("diff", "HEAD", "--", ".", cwd=source) or ""
    return {"commit": commit.strip(), "dirty": bool(diff), "diff": diff}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [],
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            info["gpus"].append(
                {"name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1)}
            )
    return info


@functools.cache  # once per process, as the code
def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def describe(config: DictConfig, command: list[str], started_at: str) -> tuple[dict[str, Any], str]:
    """What produced a new run (provenance.json's content), and the diff of a dirty checkout."""
    source = Path(trainlab.__file__).resolve().parent.parent
    code = dict(code_version(source))  # (a copy: the cached one stays whole)
    diff = code.pop("diff")
    provenance = {
        "command": command,
        "config_hash": config_hash(config),
        "code": {"version": trainlab.__version__, "source": str(source), **code},
        "versions": dict(versions()),
        "hardware": hardware(),
        "host": socket.gethostname(),
        "started_at": started_at,
        "finished_at": None,
    }
    return provenance, diff


def with_resume(
    provenance: dict[str, Any],
    config: DictConfig,
    command: list[str],
    started_at: str,
    from_step: int,
) -> dict[str, Any]:
    """``provenance`` with one more resume (its command, host, code and step) recorded."""
    source = Path(trainlab.__file__).resolve().parent.parent
    code = dict(code_version(source))  # (a copy: the cached one stays whole)
    code.pop("diff")
    resume = {
        "command": command,
        "from_step": from_step,
        "started_at": started_at,
        "host": socket.gethostname(),
        "code": {"version": trainlab.__version__, **code},
    }
    return {
        **provenance,
        "resumes": [*provenance.get("resumes", []), resume],
        "config_hash": config_hash(config),  # changes when epochs were extended
        "finished_at": None,
    }
