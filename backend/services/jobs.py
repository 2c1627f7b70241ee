"""Jobs: create, claim, move through legal states, store log lines and metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend.core import presets
from backend.db.models import Job, JobLog, JobMetric, JobStatus
from backend.services.datasets import get_dataset
from backend.services.errors import Conflict, InvalidInput, NotFound
from backend.services.models import get_model

S = JobStatus
LEGAL: dict[JobStatus, set[JobStatus]] = {
    S.queued: {S.starting, S.cancelled, S.failed},
    S.starting: {S.running, S.stopping, S.failed, S.cancelled},
    S.running: {S.stopping, S.succeeded, S.failed},
    S.stopping: {S.cancelled, S.failed, S.succeeded},
    S.succeeded: set(),
    S.failed: set(),
    S.cancelled: set(),
}


def now() -> datetime:
    return datetime.now(UTC)


def validation_problems(e: ValidationError) -> list[dict[str, Any]]:
    return [{"field": ".".join(str(x) for x in err["loc"]) or "spec", "message": err["msg"]} for err in e.errors()]


def create_job(session: Session, *, dataset_id: int, model_id: int, preset: str, overrides: dict[str, Any],
               send: Callable[[int], str]) -> Job:
    """Validate the request (every problem at once), record a queued job, then queue it."""
    problems: list[dict[str, Any]] = []
    hyper = None
    try:
        hyper = presets.resolve(preset, overrides)
    except KeyError as e:
        problems.append({"field": "preset", "message": str(e.args[0])})
    except ValidationError as e:
        problems += validation_problems(e)
    for field, getter, key in (("dataset_id", get_dataset, dataset_id), ("model_id", get_model, model_id)):
        try:
            getter(session, key)
        except NotFound as e:
            problems.append({"field": field, "message": e.message})
    if problems or hyper is None:
        raise InvalidInput("invalid job", problems)
    job = Job(dataset_id=dataset_id, model_id=model_id, preset=preset, hyper=hyper.model_dump(mode="json"),
              status=S.queued)
    session.add(job)
    session.commit()
    try:
        job.celery_task_id = send(job.id)
    except Exception as e:  # the broker is down: the job must not stay queued forever
        transition(session, job.id, S.failed, failure_reason=f"could not queue the job: {e}")
        raise
    session.commit()
    return job


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(session: Session, limit: int = 200) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))


def transition(session: Session, job_id: int, new: JobStatus, **fields: Any) -> bool:
    """Move a job to ``new`` if that is legal from its current state (compare-and-set)."""
    job = get_job(session, job_id)
    session.refresh(job)
    current = job.status
    if new not in LEGAL[current]:
        raise Conflict(f"job {job_id} cannot go from {current.value} to {new.value}")
    values: dict[str, Any] = {"status": new, "updated_at": now(), **fields}
    if new.finished:
        values.setdefault("finished_at", now())
    res = session.execute(update(Job).where(Job.id == job_id, Job.status == current).values(**values))
    session.commit()
    session.refresh(job)
    return res.rowcount == 1


def claim_job(session: Session, job_id: int, worker: str) -> bool:
    """Atomically take a queued job. False if another worker (or a redelivered message)
    already took it, or if it was cancelled meanwhile."""
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.status == S.queued)
        .values(status=S.starting, worker=worker, started_at=now(), heartbeat_at=now(), updated_at=now()))
    session.commit()
    return res.rowcount == 1


def request_cancel(session: Session, job_id: int) -> Job:
    job = get_job(session, job_id)
    if job.status == S.queued:
        transition(session, job_id, S.cancelled, failure_reason="cancelled before it started")
    elif job.status in (S.starting, S.running):
        transition(session, job_id, S.stopping)
    elif job.status != S.stopping:
        raise Conflict(f"job {job_id} is {job.status.value}; nothing to cancel")
    session.refresh(job)
    return job


def heartbeat(session: Session, job_id: int, **fields: Any) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now(), **fields))
    session.commit()


def next_seq(session: Session, model: type[JobLog] | type[JobMetric], job_id: int) -> int:
    return (session.scalar(select(func.max(model.seq)).where(model.job_id == job_id)) or 0) + 1


def append_logs(session: Session, job_id: int, first_seq: int, lines: Sequence[str], stream: str = "stdout") -> int:
    """Store lines with consecutive sequence numbers; returns the next free number."""
    session.add_all(JobLog(job_id=job_id, seq=first_seq + i, stream=stream, line=line)
                    for i, line in enumerate(lines))
    session.commit()
    return first_seq + len(lines)


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def append_metrics(session: Session, job_id: int, first_seq: int, rows: Sequence[dict[str, Any]]) -> int:
    session.add_all(JobMetric(job_id=job_id, seq=first_seq + i, step=int(r.get("step", 0)),
                              loss=_finite(r.get("loss")), values=r) for i, r in enumerate(rows))
    session.commit()
    return first_seq + len(rows)


def logs_after(session: Session, job_id: int, after: int = 0, limit: int = 1000) -> list[JobLog]:
    return list(session.scalars(select(JobLog).where(JobLog.job_id == job_id, JobLog.seq > after)
                                .order_by(JobLog.seq).limit(limit)))


def metrics_after(session: Session, job_id: int, after: int = 0, limit: int = 10000) -> list[JobMetric]:
    return list(session.scalars(select(JobMetric).where(JobMetric.job_id == job_id, JobMetric.seq > after)
                                .order_by(JobMetric.seq).limit(limit)))
