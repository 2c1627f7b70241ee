"""The Slurm executor: a :class:`worker.runtime.Launch` becomes an sbatch script in the run
folder, submitted with ``sbatch --parsable`` and followed through ``squeue``/``sacct``. It reads
the launch's fields (module, spec, nodes, processes, GPUs); it never parses a command line.

What the worker needs to tell a user lands in the job's log (the file Slurm writes to), as lines
starting with ``slurm:``: the script's path, the Slurm job id, state changes, and how the job ended.
The Slurm job id is also kept in ``RUN/slurm_job_id`` so that a job can be followed again by hand
(``squeue -j $(cat RUN/slurm_job_id)``) or by a restarted worker (:meth:`SlurmExecutor.reattach`).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from backend.core import failure
from backend.settings import Settings, get_settings
from worker.slurm import state as slurm_state
from worker.slurm.script import SlurmConfigError, SlurmJobRequest, render_sbatch
from worker.slurm.state import JobState, Run

if TYPE_CHECKING:
    from worker.runtime import Launch

SCRIPT_NAME = "job.sbatch"
JOB_ID_FILE = "slurm_job_id"
# Variables of the worker's own node that must not leak into the allocation: Slurm sets its own.
# "module.ClassError: message", the last line of a Python traceback; torchrun's own are not the cause.
NODE_LOCAL_ENV = ("CUDA_VISIBLE_DEVICES", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def first_error(log_path: Path | None) -> str | None:
    """The first real error of the training processes (backend.core.failure, the one reader of a
    trainer's log: a rank's exception, the program's own refusal, or torchrun's summary of a rank
    that failed), which torchrun's and srun's summaries (the last lines of the log) bury."""
    if log_path is None or not log_path.exists():
        return None
    err = failure.first_error(failure.read_log(log_path))
    return str(err)[:500] if err else None


class SlurmExecutor:
    """Implements :class:`worker.runtime.Executor` on a Slurm cluster."""

    def __init__(self, settings: Settings | None = None, run: Run = slurm_state.run_command) -> None:
        self.settings = settings or get_settings()
        self.run = run
        self.job_id: str | None = None
        self.log_path: Path | None = None
        self.result: int | None = None
        self.last: JobState | None = None
        self.checked_at = 0.0
        self.unknown_since: float | None = None

    # ------------------------------------------------------------------------------ the protocol
    def start(self, launch: Launch) -> None:
        run_dir, log_path = launch.run_dir, launch.log_path
        self.log_path = log_path
        if (run_dir / JOB_ID_FILE).exists():
            # Never submit a run twice: a job id here means an earlier worker submitted it.
            self._finish(1, f"slurm: {run_dir / JOB_ID_FILE} exists: this run was submitted before; "
                         "not submitting it again")
            return
        env = launch.environment()
        try:
            script = self.write_script(launch)
        except (SlurmConfigError, OSError, ValueError) as e:
            self._finish(1, f"slurm: cannot submit the job: {e}")
            return
        self._say(f"slurm: sbatch script {script}")
        self._say(*("slurm| " + line for line in script.read_text().splitlines()))
        # A worker that itself runs inside an allocation must not pass its SLURM_* on to the job.
        env = {k: v for k, v in env.items() if k not in NODE_LOCAL_ENV and not k.startswith("SLURM_")}
        out = self.run_env(["sbatch", "--parsable", str(script)], env, run_dir)
        if out.returncode != 0:
            self._finish(1, f"slurm: sbatch refused the job: {(out.stderr or out.stdout).strip()}")
            return
        self.job_id = out.stdout.strip().split(";")[0]
        (run_dir / JOB_ID_FILE).write_text(self.job_id + "\n")
        self._say(f"slurm: submitted batch job {self.job_id}")

    def poll(self) -> int | None:
        if self.result is not None or self.job_id is None:
            return self.result if self.result is not None else 1
        now = time.monotonic()
        if now - self.checked_at < self.settings.slurm_poll_seconds:
            return None
        self.checked_at = now
        st = slurm_state.query(self.job_id, self.run)
        if st is None:
            return self._unknown(now)
        self.unknown_since = None
        if self.last is not None and st.restarts > self.last.restarts:
            self._say(
                f"slurm: job {self.job_id} was requeued by Slurm (node failure or preemption); "
                "it resumes from its last checkpoint when it starts again"
            )
        if self.last is None or (st.state, st.nodes) != (self.last.state, self.last.nodes):
            if not st.finished:
                self._say(f"slurm: job {self.job_id} {st.describe()}")
        # sacct/scontrol do not count restarts: keep squeue's count
        self.last = st if st.restarts or self.last is None else replace(st, restarts=self.last.restarts)
        if st.finished:
            code = st.outcome_code()
            cause = first_error(self.log_path) if code else None
            self._finish(
                code,
                f"slurm: job {self.job_id} ended {st.describe()}, exit code {code}: "
                f"{st.meaning()}" + (f"; first error in the log: {cause}" if cause else ""),
            )
        return self.result

    def terminate(self) -> None:
        """Cooperative stop: SIGTERM to the training step (torchrun and its ranks on every node); the
        trainer saves a checkpoint and exits. Not ``--full``: that signals the batch step too, and
        srun answers SIGTERM by SIGKILLing its step ("forcing job termination"), so nothing is
        saved. A job still waiting in the queue has nothing to save and is simply cancelled."""
        if self.job_id is None or self.result is not None:
            return
        if self.last is not None and self.last.state == "PENDING":
            self._scancel()
            self._say(f"slurm: cancelled job {self.job_id} before it started (scancel)")
        else:
            self._scancel("--signal=TERM")
            self._say(f"slurm: asked job {self.job_id} to stop (scancel --signal=TERM)")

    def kill(self) -> None:
        if self.job_id is None or self.result is not None:
            return
        self._scancel("--signal=KILL", "--full")
        self._scancel()
        self._say(f"slurm: job {self.job_id} killed after the grace period (scancel)")

    # ------------------------------------------------------------------------------ helpers
    def reattach(self, launch: Launch) -> bool:
        """Follow the Slurm job an earlier worker submitted for this run (``RUN/slurm_job_id``),
        e.g. after the worker restarted; False if it never submitted one."""
        path = launch.run_dir / JOB_ID_FILE
        if not path.exists():
            return False
        self.job_id = path.read_text().strip()
        self.log_path = launch.log_path
        self._say(f"slurm: worker reattached to batch job {self.job_id}")
        return True

    def write_script(self, launch: Launch) -> Path:
        req = SlurmJobRequest.from_settings(
            self.settings,
            job_name=launch.name,
            run_dir=launch.run_dir,
            log_path=launch.log_path,
            spec_path=launch.spec_path,
            python=launch.python,
            module=launch.module,
            distributed=launch.distributed,
            resumable=launch.resumable,
            nnodes=launch.nnodes,
            nproc_per_node=launch.nproc_per_node,
            gpus_per_node=launch.gpus_per_node,
        )
        path = launch.run_dir / SCRIPT_NAME
        path.write_text(render_sbatch(req))
        path.chmod(0o755)
        return path

    def run_env(self, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
        )

    def _scancel(self, *opts: str) -> None:
        out = self.run(["scancel", *opts, str(self.job_id)])
        if out.returncode != 0:
            self._say(f"slurm: scancel {' '.join(opts)} failed: {(out.stderr or out.stdout).strip()}")

    def _unknown(self, now: float) -> int | None:
        # squeue may fail for a while (controller restarting); only a long silence ends the job.
        if self.unknown_since is None:
            self.unknown_since = now
            self._say(f"slurm: job {self.job_id} not found by squeue/sacct/scontrol; retrying")
        elif now - self.unknown_since > max(120.0, 10 * self.settings.slurm_poll_seconds):
            self._finish(
                1,
                f"slurm: job {self.job_id} is unknown to Slurm (squeue, sacct, scontrol): "
                "it was purged or the controller is unreachable",
            )
        return self.result

    def _finish(self, code: int, line: str) -> None:
        self._say(line)
        self.result = code

    def _say(self, *lines: str) -> None:
        """Append worker lines to the job's log, which the worker streams like the trainer's output."""
        assert self.log_path is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
