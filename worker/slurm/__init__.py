"""The Slurm backend (``VLSTUDIO_BACKEND=slurm``): jobs run as sbatch scripts on a cluster.

See ``docs/deploy-slurm.md``. :class:`SlurmExecutor` implements the launcher's ``Executor``.
"""

from worker.slurm.executor import SlurmExecutor

__all__ = ["SlurmExecutor"]
