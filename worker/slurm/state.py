"""Where a Slurm job stands, from ``squeue`` while it is known there, then ``sacct`` (when the
cluster keeps accounting) or ``scontrol`` (recently finished jobs, ``MinJobAge``)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from worker.slurm.script import NEAR_LIMIT_EXIT

Run = Callable[[list[str]], subprocess.CompletedProcess]

# Slurm's job states that end a job, with what they mean to a user.
TERMINAL = {
    "COMPLETED": "completed",
    "FAILED": "the batch script exited with an error",
    "CANCELLED": "cancelled in Slurm (scancel)",
    "TIMEOUT": "the time limit was reached; resume from the last checkpoint",
    "NODE_FAIL": "a node failed; resume from the last checkpoint",
    "PREEMPTED": "preempted by a higher-priority job; resume from the last checkpoint",
    "OUT_OF_MEMORY": "a node ran out of memory",
    "BOOT_FAIL": "a node failed to boot",
    "DEADLINE": "the job's deadline passed",
}
# Exit codes for ends that leave none of their own (the shell's convention for signals, 128 + N).
SIGNAL_EXIT = {"CANCELLED": 143, "TIMEOUT": 143, "PREEMPTED": 143, "NODE_FAIL": 137, "OUT_OF_MEMORY": 137}


def run_command(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@dataclass(frozen=True)
class JobState:
    state: str  # Slurm's state name, e.g. PENDING, RUNNING, COMPLETED, TIMEOUT
    reason: str = ""
    nodes: str = ""
    exit_code: int | None = None  # the batch script's, when Slurm reports it
    restarts: int = 0  # times Slurm requeued it (squeue only)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def describe(self) -> str:
        text = self.state + (f" on {self.nodes}" if self.nodes and self.nodes != "(null)" else "")
        if self.reason and self.reason not in ("None", "(null)"):
            text += f" (reason: {self.reason})"
        return text

    def meaning(self) -> str:
        if self.state == "FAILED" and self.exit_code == NEAR_LIMIT_EXIT:
            return "stopped with a checkpoint before the time limit; resume the job to continue"
        return TERMINAL[self.state]

    def outcome_code(self) -> int:
        """The exit code the worker records: the script's own, else one that says how it ended."""
        if self.exit_code is not None and (self.exit_code or self.state == "COMPLETED"):
            return self.exit_code
        return SIGNAL_EXIT.get(self.state, 0 if self.state == "COMPLETED" else 1)


def _exit_code(text: str) -> int | None:
    """Slurm writes ``code:signal``; a signal N becomes 128 + N as in a shell."""
    try:
        code, _, sig = text.partition(":")
        return int(code) if int(code) or not sig or not int(sig) else 128 + int(sig)
    except ValueError:
        return None


def from_squeue(job_id: str, run: Run = run_command) -> JobState | None:
    out = run(["squeue", "-h", "-t", "all", "-j", job_id, "-O", "State:|,Reason:|,NodeList:|,RestartCnt:|"])
    if out.returncode != 0 or not out.stdout.strip():
        return None
    state, reason, nodes, restarts = (out.stdout.strip().splitlines()[0].split("|") + ["", "", ""])[:4]
    return JobState(state.split()[0], reason, nodes, restarts=int(restarts) if restarts.isdigit() else 0)


def from_sacct(job_id: str, run: Run = run_command) -> JobState | None:
    out = run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode,Reason,NodeList"])
    if out.returncode != 0 or not out.stdout.strip():
        return None
    state, code, reason, nodes = (out.stdout.strip().splitlines()[0].split("|") + ["", "", ""])[:4]
    # sacct writes "CANCELLED by 0"
    return JobState(state.split()[0], reason, nodes, _exit_code(code))


def from_scontrol(job_id: str, run: Run = run_command) -> JobState | None:
    out = run(["scontrol", "show", "job", "-o", job_id])
    if out.returncode != 0 or "JobState=" not in out.stdout:
        return None
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    return JobState(
        fields.get("JobState", "UNKNOWN"),
        fields.get("Reason", ""),
        fields.get("NodeList", ""),
        _exit_code(fields.get("ExitCode", "")),
    )


def query(job_id: str, run: Run = run_command) -> JobState | None:
    """The job's state, with its exit code once finished; None if Slurm no longer knows it."""
    live = from_squeue(job_id, run)
    if live is not None and not live.finished:
        return live
    return from_sacct(job_id, run) or from_scontrol(job_id, run) or live
