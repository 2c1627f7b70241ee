"""The executor of the configured backend: the one place that picks an implementation of the
launch contract (:mod:`worker.runtime`), so the contract knows none of them."""

from __future__ import annotations

from backend.settings import get_settings
from worker.local import LocalExecutor
from worker.runtime import Executor
from worker.slurm import SlurmExecutor


def make_executor() -> Executor:
    """The executor of ``VLSTUDIO_BACKEND``: Slurm's, or the local one (torchrun or one process)."""
    return SlurmExecutor() if get_settings().backend == "slurm" else LocalExecutor()
