"""Scheduling from the jobs table: per-node GPU leases, priority then submission order,
worker heartbeats and the recovery of jobs whose worker went silent.

The database is the queue. A broker message only wakes a worker up, so a broker restart
loses nothing, and the claim (a conditional UPDATE plus lease rows under a primary key, in
one transaction) makes a double start impossible however many workers race for a job.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db.models import Evaluation, GpuLease, Job, JobStatus, WorkerNode
from backend.settings import get_settings

S = JobStatus
ACTIVE = (S.starting, S.running, S.stopping)
CANDIDATES = 100


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claim:
    job_id: int
    gpu_ids: list[int]
    port: int


def register_worker(session: Session, name: str, node: str, gpus: int, gpu_memory_mib: int | None,
                    cpus: int | None = None) -> None:
    """``cpus``: the CPUs a job of this worker gets, the ceiling of a CPU job's ranks (default: this
    machine's; with Slurm, VLSTUDIO_SLURM_CPUS_PER_TASK or unknown)."""
    settings = get_settings()
    cpus = cpus or (settings.slurm_cpus_per_task if settings.backend == "slurm" else os.cpu_count())
    row = session.get(WorkerNode, name)
    if row is None:
        session.add(WorkerNode(name=name, node=node, gpus=gpus, gpu_memory_mib=gpu_memory_mib, cpus=cpus))
    else:
        row.node, row.gpus, row.gpu_memory_mib, row.started_at, row.heartbeat_at = node, gpus, gpu_memory_mib, now(), now()
        row.cpus = cpus
    session.commit()


def heartbeat(session: Session, worker: str, job_ids: list[int]) -> None:
    """One write for the worker and every job it runs."""
    session.execute(update(WorkerNode).where(WorkerNode.name == worker).values(heartbeat_at=now()))
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids), Job.status.in_(ACTIVE)).values(heartbeat_at=now()))
    session.commit()


def unregister_worker(session: Session, worker: str) -> None:
    session.execute(delete(WorkerNode).where(WorkerNode.name == worker))
    session.commit()


def cluster_capacity(session: Session) -> tuple[int | None, int | None]:
    """(most GPUs on any known node, GPU memory in MiB of such a node); None when no worker
    ever registered, so a job queued before the first worker starts is not refused."""
    rows = session.execute(select(WorkerNode.gpus, WorkerNode.gpu_memory_mib)).all()
    if not rows:
        return None, None
    most = max(r[0] for r in rows)
    mems = [r[1] for r in rows if r[0] == most and r[1]]
    return most, max(mems) if mems else None


def cpu_capacity(session: Session) -> int | None:
    """The most CPUs of any registered worker's node; None when none registered one."""
    return session.scalar(select(func.max(WorkerNode.cpus)))


def _used_ports(session: Session, node: str) -> set[int]:
    q = select(Job.rendezvous_port).where(Job.node == node, Job.status.in_(ACTIVE), Job.rendezvous_port.is_not(None))
    return set(session.scalars(q))


def free_port(used: set[int]) -> int:
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in used:
            return port
    raise RuntimeError("no free rendezvous port")


def claim_next(session: Session, worker: str, node: str, gpu_total: int | None, cpu_running: int,
               cpu_slots: int) -> Claim | None:
    """Take the first queued job (highest priority, then oldest) that fits this node now.

    A job that needs more GPUs than are free waits; a smaller one behind it may start on
    the free GPUs meanwhile (backfill). ``gpu_total=None``: GPUs are not this node's to
    lease (a cluster scheduler such as Slurm places the job); every job takes a slot."""
    leased = set(session.scalars(select(GpuLease.gpu_index).where(GpuLease.node == node)))
    free = [i for i in range(gpu_total or 0) if i not in leased]
    q = (select(Job.id, Job.gpus).where(Job.status == S.queued)
         .order_by(Job.priority.desc(), Job.id).limit(CANDIDATES))
    for job_id, gpus in session.execute(q).all():
        if gpu_total is None:
            if cpu_running >= cpu_slots:
                break
            gpus = 0
        elif gpus > len(free) or (gpus == 0 and cpu_running >= cpu_slots):
            continue
        ids = free[:gpus]
        port = free_port(_used_ports(session, node))
        try:
            res = session.execute(
                update(Job).where(Job.id == job_id, Job.status == S.queued)
                .values(status=S.starting, worker=worker, node=node, gpu_ids=",".join(map(str, ids)),
                        rendezvous_port=port, started_at=now(), heartbeat_at=now(), updated_at=now()))
            if res.rowcount != 1:
                session.rollback()
                continue  # another worker took it
            session.add_all(GpuLease(node=node, gpu_index=i, job_id=job_id) for i in ids)
            session.commit()
        except IntegrityError:  # another worker on this node leased one of these GPUs first
            session.rollback()
            return None
        return Claim(job_id, ids, port)
    session.rollback()
    return None


def release_leases(session: Session, job_id: int) -> None:
    session.execute(delete(GpuLease).where(GpuLease.job_id == job_id))


def lease_for_evaluation(session: Session, node: str, evaluation_id: int, gpu_total: int, n: int = 1) -> list[int] | None:
    """Lease ``n`` free GPUs of ``node`` for an evaluation (the same rows, the same primary key
    guard as a training job's); None while fewer are free."""
    return _lease(session, node, gpu_total, n, evaluation_id=evaluation_id)


def lease_for_holder(session: Session, node: str, holder: str, gpu_total: int, n: int = 1) -> list[int] | None:
    """The same for a long-lived holder, e.g. a worker's model server (``serve:<worker>``)."""
    return _lease(session, node, gpu_total, n, holder=holder)


def release_holder(session: Session, holder: str) -> None:
    session.execute(delete(GpuLease).where(GpuLease.holder == holder))
    session.commit()


def _lease(session: Session, node: str, gpu_total: int, n: int, **owner: object) -> list[int] | None:
    leased = set(session.scalars(select(GpuLease.gpu_index).where(GpuLease.node == node)))
    free = [i for i in range(gpu_total) if i not in leased][:n]
    if len(free) < n:
        return None
    try:
        session.add_all(GpuLease(node=node, gpu_index=i, **owner) for i in free)
        session.commit()
    except IntegrityError:  # another worker of this node leased one of them first
        session.rollback()
        return None
    return free


def release_evaluation_leases(session: Session, evaluation_id: int) -> None:
    session.execute(delete(GpuLease).where(GpuLease.evaluation_id == evaluation_id))


# Written into the run folder by a cluster backend once the cluster accepted the run (the Slurm
# job id): the run goes on without its worker, so it is adopted, never failed for silence.
CLUSTER_JOB_FILE = "slurm_job_id"


def on_cluster(run: Job | Evaluation) -> bool:
    return bool(run.run_dir) and (Path(run.run_dir) / CLUSTER_JOB_FILE).exists()


def adopt_cluster_jobs(session: Session, worker: str, timeout_s: float, followed: set[int],
                       table: type[Job] | type[Evaluation] = Job) -> list[int]:
    """Take over active cluster runs (training jobs, or evaluations with ``table=Evaluation``)
    that nobody follows: this worker's own from before a restart, or any whose worker went
    silent. Compare-and-set on (worker, heartbeat), so two workers never adopt the same run."""
    cutoff = now() - timedelta(seconds=timeout_s)
    rows = session.execute(select(table.id, table.worker, table.heartbeat_at, table.run_dir).where(
        table.status.in_(ACTIVE), table.run_dir.is_not(None))).all()
    adopted = []
    for run_id, owner, beat, run_dir in rows:
        if run_id in followed or not (Path(run_dir) / CLUSTER_JOB_FILE).exists():
            continue
        if owner != worker and (beat is None or beat.replace(tzinfo=beat.tzinfo or UTC) >= cutoff):
            continue
        res = session.execute(update(table).where(table.id == run_id, table.worker == owner,
                                                  table.heartbeat_at == beat)
                              .values(worker=worker, heartbeat_at=now()))
        session.commit()
        if res.rowcount == 1:
            adopted.append(run_id)
    return adopted


def stale_jobs(session: Session, timeout_s: float) -> list[Job]:
    cutoff = now() - timedelta(seconds=timeout_s)
    return list(session.scalars(select(Job).where(Job.status.in_(ACTIVE), Job.heartbeat_at < cutoff)))


def queue_stats(session: Session) -> dict[str, object]:
    by_state = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    leases = dict(session.execute(select(GpuLease.node, func.count()).group_by(GpuLease.node)).all())
    workers = session.execute(select(WorkerNode.name, WorkerNode.node, WorkerNode.gpus, WorkerNode.heartbeat_at)).all()
    return {"by_state": {s.value: int(by_state.get(s, 0)) for s in JobStatus}, "leases": leases, "workers": workers}
