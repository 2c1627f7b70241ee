"""The launch contract: what one run asks of an executor, for training and evaluation alike.

A :class:`Launch` says what to run (a Python module reading ``--spec RUN/spec.json``), on how
many nodes, with how many processes and GPUs per node, with which leased devices and extra
environment, and where its output goes. Every backend implements :class:`Executor` from
these fields; none re-parses another's command line. The local backend is
:class:`worker.local.LocalExecutor` (torchrun or a plain process on this node), the Slurm
backend :class:`worker.slurm.SlurmExecutor` (an sbatch script).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from backend.core.spec import WORKER_RUN_ENV
from worker.processes import RUN_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]


class LaunchError(ValueError):
    """A launch this backend cannot run as asked (recorded as the run's failure reason)."""


@dataclass(frozen=True)
class Launch:
    name: str  # e.g. "vlstudio-job-12": the cluster job's name
    module: str  # "worker.training.train" | "worker.evaluation.run"
    spec_path: Path
    run_dir: Path
    log_path: Path
    distributed: bool = True  # torchrun, one process per device; False: one plain process
    nnodes: int = 1
    nproc_per_node: int = 1
    gpus_per_node: int = 0
    gpu_ids: tuple[int, ...] | None = None  # devices leased on this node; None: the cluster places
    port: int | None = None  # rendezvous port on this node (local torchrun)
    resumable: bool = False  # a cluster requeue resumes from the run's last checkpoint (training)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the program
    python: str = sys.executable

    def program(self) -> list[str]:
        return ["-m", self.module, "--spec", str(self.spec_path)]

    def local_command(self) -> list[str]:
        """The command line on one node: what the local executor runs and ``command.txt`` holds."""
        if not self.distributed:
            return [self.python, *self.program()]
        return [self.python, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
                str(self.nproc_per_node), "--master_addr", "127.0.0.1", "--master_port", str(self.port or 29500),
                *self.program()]

    def environment(self) -> dict[str, str]:
        """The program's environment. PYTHONPATH: it runs the same code as this worker, whatever
        an installed copy of the package says. CUDA_VISIBLE_DEVICES: the leased GPUs (empty hides
        every GPU from a CPU run); unset when a cluster scheduler places the run."""
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path,
               WORKER_RUN_ENV: "1", **self.env}  # issue 17: marks the worker's own launches
        env[RUN_ENV] = str(self.spec_path.resolve())  # inherited by all it starts: worker.processes.run_tree
        if self.gpu_ids is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpu_ids))
        return env

    def write_command(self) -> str:
        line = shlex.join(self.local_command())
        if self.env:  # what the program needs from its environment, e.g. the data index cache
            line = shlex.join(["env", *(f"{k}={v}" for k, v in sorted(self.env.items()))]) + " " + line
        (self.run_dir / "command.txt").write_text(line + "\n")
        return line


class Executor(Protocol):
    """Where a launch runs. Output goes to ``launch.log_path``; ``poll`` returns the exit code
    once the run ended; ``terminate`` asks every process of the run to save and stop;
    ``kill`` ends every one of them now; ``reattach`` follows a run started by an earlier
    worker process (True if there was one to follow)."""

    def start(self, launch: Launch) -> None: ...

    def reattach(self, launch: Launch) -> bool: ...

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...
