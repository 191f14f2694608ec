"""hydra/launcher=slurm's launcher: hydra-submitit-launcher's, unchanged, except that a member
job that died (a node lost, the OOM killer, a failing process of a data-parallel member) ends
the sweep with one line saying where its logs are, instead of submitit's traceback. (Hydra
accepts launchers only from the hydra_plugins package, hence this folder.)

Members that fail with an error do not get here: trainlab records them and their job succeeds.
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


class TrainlabSlurmLauncher(SlurmLauncher or object):  # type: ignore[misc]
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from submitit.core.utils import UncompletedJobError

        try:
            return super().launch(job_overrides, initial_job_idx)
        except UncompletedJobError as error:
            first = str(error).strip().splitlines()[0]
            match = re.match(r"Job (\S+)", first)
            logs = str(self.params["submitit_folder"]).replace("%j", match[1] if match else "%j")
            print(
                f"trainlab: error: a sweep member's job ended without a result ({first}); its "
                f"logs are in {logs}. Once the sweep's other jobs have ended, run the same command "
                "again: finished members are skipped, the rest resume or rerun",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
