"""hydra/launcher=slurm's launcher: hydra-submitit-launcher's, with three changes.

- A member job that ended without a result (a node lost, the OOM killer, a process of a
  data-parallel member that crashed while training) ends the sweep with one line saying where
  its logs are, instead of submitit's traceback. Members refused as they set up (bad config,
  data missing, on any of their processes) record the failure in their metrics.json and their
  job succeeds, so the sweep goes on.
- Ctrl-C while waiting says that the submitted jobs keep running on the cluster.
- Every job's script exports SLURM_KILL_BAD_EXIT=1, even when the user replaced ``setup``: a
  process that exits non-zero then ends its job's other processes instead of leaving them
  waiting for it.

(Hydra accepts launchers only from the hydra_plugins package, hence this folder.)
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

try:  # Hydra imports every plugin at start-up; without the sweep extra there is none to extend
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # pragma: no cover
    SlurmLauncher = None

KILL_BAD_EXIT = "export SLURM_KILL_BAD_EXIT=1"


class TrainlabSlurmLauncher(SlurmLauncher or object):  # type: ignore[misc]
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from submitit.core.utils import UncompletedJobError

        setup = list(self.params.get("setup") or [])
        if KILL_BAD_EXIT not in setup:
            self.params["setup"] = [KILL_BAD_EXIT, *setup]
        folder = str(self.params["submitit_folder"])
        try:
            return super().launch(job_overrides, initial_job_idx)
        except UncompletedJobError as error:
            first = str(error).strip().splitlines()[0]
            match = re.match(r"Job (\S+)", first)
            logs = folder.replace("%j", match[1] if match else "%j")
            print(
                f"trainlab: error: a sweep member's job ended without a result ({first}); its "
                f"logs are in {logs}. Once the sweep's other jobs have ended, run the same command "
                "again: finished members are skipped, the rest resume or rerun",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print(
                "trainlab: interrupted while waiting; the submitted jobs keep running on the "
                f"cluster (squeue lists them, scancel stops them; their logs: {folder}). Once "
                "they have ended, run the same command again: finished members are skipped and "
                "the table is printed",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
