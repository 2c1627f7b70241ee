"""The sbatch script of one job: kept in the run folder, readable, rerunnable by hand.

``srun`` starts one torchrun launcher per node; they meet at a c10d rendezvous on the first node
of the allocation, and each starts ``nproc_per_node`` training processes, DeepSpeed as on one node.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from backend.settings import Settings

TRAIN_MODULE = "worker.training.train"
# The folder holding the worker's own ``worker`` and ``backend`` packages: the nodes import the very
# code the worker runs (on the shared filesystem), whatever else their Python has installed.
CODE_ROOT = Path(__file__).resolve().parents[2]
# The script's exit code when it stopped the trainer ahead of the time limit (as timeout(1) does).
NEAR_LIMIT_EXIT = 124


class SlurmConfigError(ValueError):
    """A job or deployment setting that cannot be turned into an sbatch script."""


@dataclass
class SlurmJobRequest:
    """What one job asks of Slurm (from its spec) and what the deployment adds (from settings)."""

    job_name: str
    run_dir: Path
    log_path: Path
    spec_path: Path
    python: str
    module: str = TRAIN_MODULE
    distributed: bool = True  # torchrun on each node; False: one plain process
    resumable: bool = True  # a Slurm requeue resumes from the last checkpoint (training)
    nnodes: int = 1
    nproc_per_node: int = 1
    gpus_per_node: int = 0
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str | None = None
    cpus_per_task: int | None = None
    extra_options: list[str] = field(default_factory=list)
    setup: str = ""
    requeue: bool = False
    signal_seconds: int = 120

    @classmethod
    def from_settings(cls, settings: Settings, **job: object) -> SlurmJobRequest:
        req = cls(
            partition=settings.slurm_partition,
            account=settings.slurm_account,
            qos=settings.slurm_qos,
            time_limit=settings.slurm_time_limit,
            cpus_per_task=settings.slurm_cpus_per_task,
            extra_options=shlex.split(settings.slurm_extra_options),
            setup=settings.slurm_setup,
            signal_seconds=settings.slurm_signal_seconds,
            **job,
        )  # type: ignore[arg-type]
        # Only a run that resumes from its checkpoint may be restarted by Slurm: an evaluation
        # would start again from its first sample, rewriting the outputs the studio has read.
        req.requeue = settings.slurm_requeue and req.resumable
        if settings.slurm_python:
            req.python = settings.slurm_python
        limit = settings.slurm_gpus_per_node
        if limit is not None and req.gpus_per_node > limit:
            raise SlurmConfigError(
                f"the job asks for {req.gpus_per_node} GPUs per node but the partition's "
                f"nodes have {limit} (VLSTUDIO_SLURM_GPUS_PER_NODE)"
            )
        shared = settings.slurm_shared_dir
        if shared is not None and not req.run_dir.resolve().is_relative_to(shared.expanduser().resolve()):
            raise SlurmConfigError(
                f"the run folder {req.run_dir} is not inside the shared folder {shared} "
                "(VLSTUDIO_SLURM_SHARED_DIR): the nodes could not read it; put "
                "VLSTUDIO_DATA_DIR on the shared filesystem"
            )
        return req


def _directives(req: SlurmJobRequest) -> list[str]:
    q = shlex.quote
    opts = [
        f"--job-name={q(req.job_name)}",
        f"--chdir={q(str(req.run_dir))}",
        f"--output={q(str(req.log_path))}",
        "--open-mode=append",
        f"--nodes={req.nnodes}",
        "--ntasks-per-node=1",
    ]
    for flag, value in (
        ("partition", req.partition),
        ("account", req.account),
        ("qos", req.qos),
        ("time", req.time_limit),
        ("cpus-per-task", req.cpus_per_task),
    ):
        if value:
            opts.append(f"--{flag}={q(str(value))}")
    if req.gpus_per_node:
        opts.append(f"--gpus-per-node={req.gpus_per_node}")
    if req.signal_seconds:
        # The batch shell gets USR1 this long before the time limit and stops the trainer (see below).
        opts.append(f"--signal=B:USR1@{req.signal_seconds}")
    opts.append("--requeue" if req.requeue else "--no-requeue")
    opts += [q(o) for o in req.extra_options]
    return [f"#SBATCH {o}" for o in opts]


def render_sbatch(req: SlurmJobRequest) -> str:
    q = shlex.quote
    py = q(req.python)
    launcher = f'{py} -m {req.module} --spec "$SPEC"'
    if req.distributed:
        launcher = (
            f"{py} -m torch.distributed.run --nnodes {req.nnodes} --nproc_per_node {req.nproc_per_node} "
            f'--rdzv_backend c10d --rdzv_endpoint "$HEAD_NODE:$PORT" --rdzv_id "$SLURM_JOB_ID" '
            f"-m {req.module} --spec \"$SPEC\""
        )
    requeue = [
        'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then',
        "  # Requeued after a node failure or preemption: resume from the last checkpoint.",
        f'  SPEC=$({py} -m worker.slurm.requeue "$SPEC") || exit 1',
        '  echo "slurm: requeued (restart $SLURM_RESTART_COUNT), training from $SPEC"',
        "fi",
    ] if req.resumable else []
    lines = [
        "#!/bin/bash",
        f"# {req.job_name}: written by vlstudio's worker. Rerun by hand: sbatch {q(str(req.run_dir))}/job.sbatch",
        *_directives(req),
        "set -uo pipefail",
        "export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false",
        f"export PYTHONPATH={q(str(CODE_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
        req.setup.strip(),
        f"SPEC={q(str(req.spec_path))}",
        *requeue,
        'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        # The batch script runs on the first node, so a port free here is free for the rendezvous.
        f"PORT=$({py} -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])')",
        'echo "slurm: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, rendezvous $HEAD_NODE:$PORT"',
        # At the time limit Slurm kills everything; shortly before, stop the trainer with a checkpoint.
        # SIGTERM goes to the training step only: srun itself answers SIGTERM by killing its step.
        "trap 'NEAR_LIMIT=1; echo \"slurm: the time limit is near: the trainer saves a checkpoint; resume "
        'the job to continue"; scancel --signal=TERM "$SLURM_JOB_ID"\' USR1',
        f"srun --kill-on-bad-exit=1 --nodes={req.nnodes} --ntasks-per-node=1 {launcher} &",
        "SRUN=$!",
        # A trapped signal interrupts `wait` while srun still runs: wait again.
        "wait $SRUN; RC=$?",
        "while kill -0 $SRUN 2>/dev/null; do wait $SRUN; RC=$?; done",
        # A trainer stopped on request exits 0 with a checkpoint; without a final model it did not finish.
        f'[ -n "${{NEAR_LIMIT:-}}" ] && {{ [ "$RC" != 0 ] || [ ! -e final ]; }} && exit {NEAR_LIMIT_EXIT}',
        "exit $RC",
    ]
    return "\n".join(line for line in lines if line) + "\n"
