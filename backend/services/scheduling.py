"""Scheduling from the run tables (training jobs and evaluations, :mod:`backend.services.runs`):
per-node GPU leases, priority then submission order, worker heartbeats and the adoption of
cluster runs whose worker went silent.

The database is the queue. A broker message only wakes a worker up, so a broker restart
loses nothing, and the claim (a conditional UPDATE plus lease rows under a primary key, in
one transaction) makes a double start impossible however many workers race for a job.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.core.clock import now
from backend.db.models import Evaluation, GpuLease, Job, JobStatus, WorkerNode
from backend.services.runs import ACTIVE, CLUSTER_JOB_FILE, EVALUATION, JOB, RunKind, on_cluster  # noqa: F401
from backend.settings import get_settings

S = JobStatus
CANDIDATES = 100


@dataclass(frozen=True)
class Claim:
    """A run this worker took: which (``kind``: "job" or "evaluation"), on which leased GPUs,
    with which rendezvous port (training only)."""

    run_id: int
    gpu_ids: list[int]
    port: int
    kind: str = "job"


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


def heartbeat(session: Session, worker: str, job_ids: Sequence[int], evaluation_ids: Sequence[int] = ()) -> None:
    """One write for the worker and every run it follows."""
    session.execute(update(WorkerNode).where(WorkerNode.name == worker).values(heartbeat_at=now()))
    for table, ids in ((Job, job_ids), (Evaluation, evaluation_ids)):
        if ids:
            session.execute(update(table).where(table.id.in_(ids), table.status.in_(ACTIVE)).values(heartbeat_at=now()))
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


def _queued(session: Session) -> list[tuple[RunKind, int, int | None]]:
    """Queued runs in the order they are served: highest priority first, then submission
    order; training jobs and evaluations (priority 0) in one line, each in its own order.
    (kind, id, GPUs asked for; None: an evaluation's one GPU where the node has GPUs)."""
    jobs = session.execute(select(Job.id, Job.gpus, Job.priority, Job.created_at).where(Job.status == S.queued)
                           .order_by(Job.priority.desc(), Job.id).limit(CANDIDATES)).all()
    evals = session.execute(select(Evaluation.id, Evaluation.created_at).where(Evaluation.status == S.queued)
                            .order_by(Evaluation.id).limit(CANDIDATES)).all()
    out: list[tuple[RunKind, int, int | None]] = []
    i = j = 0
    while i < len(jobs) or j < len(evals):
        if j == len(evals) or (i < len(jobs) and (-jobs[i].priority, jobs[i].created_at) <= (0, evals[j].created_at)):
            out.append((JOB, jobs[i].id, jobs[i].gpus))
            i += 1
        else:
            out.append((EVALUATION, evals[j].id, None))
            j += 1
    return out


Slots = int | dict[str, int]  # one budget for every kind, or one per kind ("job", "evaluation")


def _full(running: Slots, slots: Slots, kind: RunKind) -> bool:
    def of(x: Slots) -> int:
        return x if isinstance(x, int) else x.get(kind.name, 0)
    return of(running) >= of(slots)


def claim_next(session: Session, worker: str, node: str, gpu_total: int | None, cpu_running: Slots,
               cpu_slots: Slots) -> Claim | None:
    """Take the first queued run (highest priority, then oldest) that fits this node now.

    A run that needs more GPUs than are free waits; a smaller one behind it may start on
    the free GPUs meanwhile (backfill). An evaluation takes one GPU of a node with GPUs, a CPU
    slot on one without. ``gpu_total=None``: GPUs are not this node's to lease (a cluster
    scheduler such as Slurm places the run); every run takes a slot. ``cpu_running`` and
    ``cpu_slots``: the runs that take a slot now and the slots, for all kinds or per kind."""
    leased = set(session.scalars(select(GpuLease.gpu_index).where(GpuLease.node == node)))
    free = [i for i in range(gpu_total or 0) if i not in leased]
    for kind, run_id, gpus in _queued(session):
        if gpus is None:
            gpus = 1 if gpu_total else 0
        if gpu_total is None:
            if _full(cpu_running, cpu_slots, kind):
                continue
            gpus = 0
        elif gpus > len(free) or (gpus == 0 and _full(cpu_running, cpu_slots, kind)):
            continue
        ids = free[:gpus]
        t = kind.table
        values = {"status": S.starting, "worker": worker, "started_at": now(), "heartbeat_at": now(),
                  "updated_at": now()}
        port = 0
        if kind is JOB:
            port = free_port(_used_ports(session, node))
            values.update(node=node, gpu_ids=",".join(map(str, ids)), rendezvous_port=port)
        try:
            res = session.execute(update(t).where(t.id == run_id, t.status == S.queued).values(**values))
            if res.rowcount != 1:
                session.rollback()
                continue  # another worker took it
            session.add_all(GpuLease(node=node, gpu_index=i, **{kind.fk: run_id}) for i in ids)
            session.commit()
        except IntegrityError:  # another worker on this node leased one of these GPUs first
            session.rollback()
            return None
        return Claim(run_id, ids, port, kind.name)
    session.rollback()
    return None


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


def adopt_cluster_jobs(session: Session, worker: str, timeout_s: float, followed: set[int],
                       kind: RunKind = JOB) -> list[int]:
    """Take over active cluster runs of ``kind`` that nobody follows: this worker's own from
    before a restart, or any whose worker went silent. Compare-and-set on (worker, heartbeat),
    so two workers never adopt the same run."""
    table = kind.table
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


def queue_stats(session: Session) -> dict[str, object]:
    by_state = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    leases = dict(session.execute(select(GpuLease.node, func.count()).group_by(GpuLease.node)).all())
    workers = session.execute(select(WorkerNode.name, WorkerNode.node, WorkerNode.gpus, WorkerNode.heartbeat_at)).all()
    return {"by_state": {s.value: int(by_state.get(s, 0)) for s in JobStatus}, "leases": leases, "workers": workers}
