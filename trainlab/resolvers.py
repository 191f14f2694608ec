"""The ``${trainlab_*:...}`` resolvers conf/ uses (registered on import; no torch)."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def run_name(override_dirname: str, job_number: int) -> str:
    """A sweep member's folder name: its overrides (``loss=huber,optimizer.lr=0.01``)."""
    name = override_dirname.replace(os.sep, "_") or f"run{job_number}"
    return name if len(name) <= 200 else f"{name[:180]}...#{job_number}"


def run_dir(resume: str | None, default: str) -> str:
    """hydra.run.dir: the folder being resumed, else a new timestamped one."""
    return str(resume) if resume else default


def gpu_jobs(members_per_gpu: int) -> int:
    """hydra/launcher=gpus: members at once, ``members_per_gpu`` on each GPU (one on a CPU)."""
    import torch

    return max(1, torch.cuda.device_count()) * int(members_per_gpu)


OmegaConf.register_new_resolver("trainlab_run_name", run_name, replace=True)
OmegaConf.register_new_resolver("trainlab_run_dir", run_dir, replace=True)
OmegaConf.register_new_resolver("trainlab_gpu_jobs", gpu_jobs, replace=True)
