from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from backend.api.deps import SessionDep, SettingsDep
from backend.api.schemas import JobCreate, JobOut, LogLineOut, MetricOut
from backend.db.session import get_sessionmaker
from backend.queue import TRAIN_TASK, make_celery
from backend.services import jobs as svc

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", response_model=JobOut, status_code=201,
             responses={422: {"description": "invalid spec; `errors` lists every problem"}})
def create_job(body: JobCreate, session: SessionDep, settings: SettingsDep):  # noqa: ANN201
    celery = make_celery(settings)

    def send(job_id: int) -> str:
        return celery.send_task(TRAIN_TASK, args=[job_id]).id

    return svc.create_job(session, dataset_id=body.dataset_id, model_id=body.model_id, preset=body.preset,
                          overrides=body.hyperparameters, send=send)


@router.get("", response_model=list[JobOut])
def list_jobs(session: SessionDep) -> list:
    return svc.list_jobs(session)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: int, session: SessionDep):  # noqa: ANN201
    return svc.get_job(session, job_id)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: int, session: SessionDep):  # noqa: ANN201
    """Cooperative cancel: the trainer gets SIGTERM, saves a checkpoint and exits."""
    return svc.request_cancel(session, job_id)


@router.get("/{job_id}/logs", response_model=list[LogLineOut])
def get_logs(job_id: int, session: SessionDep, after: int = 0, limit: int = 1000) -> list:
    """Log lines with ``seq`` greater than ``after`` (a cursor), oldest first."""
    svc.get_job(session, job_id)
    return svc.logs_after(session, job_id, after, min(limit, 10000))


@router.get("/{job_id}/metrics", response_model=list[MetricOut])
def get_metrics(job_id: int, session: SessionDep, after: int = 0) -> list:
    svc.get_job(session, job_id)
    return svc.metrics_after(session, job_id, after)


def _parse_cursor(value: str | None) -> tuple[int, int]:
    try:
        a, b = (value or "0:0").split(":")
        return int(a), int(b)
    except ValueError:
        return 0, 0


def _poll(job_id: int, log_after: int, metric_after: int) -> tuple[dict, list, list]:
    with get_sessionmaker()() as s:
        job = svc.get_job(s, job_id)
        state = {"status": job.status.value, "step": job.step, "total_steps": job.total_steps,
                 "exit_code": job.exit_code, "failure_reason": job.failure_reason}
        logs = [{"seq": r.seq, "stream": r.stream, "line": r.line} for r in svc.logs_after(s, job_id, log_after, 500)]
        metrics = [{"seq": m.seq, "step": m.step, "loss": m.loss, "values": m.values}
                   for m in svc.metrics_after(s, job_id, metric_after, 500)]
    return state, logs, metrics


@router.get("/{job_id}/events")
async def job_events(job_id: int, request: Request, session: SessionDep, settings: SettingsDep,
                     last_event_id: str | None = Header(None), cursor: str | None = None) -> StreamingResponse:
    """Server-sent events: ``log``, ``metric`` and ``status`` as they happen, then ``end``.

    Every event id is the cursor ``LOGSEQ:METRICSEQ``; reconnect with ``Last-Event-ID`` (or
    ``?cursor=``) to resume without gaps."""
    svc.get_job(session, job_id)
    log_after, metric_after = _parse_cursor(last_event_id or cursor)
    poll = settings.stream_poll_seconds

    async def stream() -> AsyncIterator[str]:
        nonlocal log_after, metric_after
        last_state: dict | None = None
        yield "retry: 1000\n\n"
        while True:
            if await request.is_disconnected():
                return
            state, logs, metrics = await run_in_threadpool(_poll, job_id, log_after, metric_after)
            for row in logs:
                log_after = row["seq"]
                yield f"id: {log_after}:{metric_after}\nevent: log\ndata: {json.dumps(row)}\n\n"
            for row in metrics:
                metric_after = row["seq"]
                yield f"id: {log_after}:{metric_after}\nevent: metric\ndata: {json.dumps(row)}\n\n"
            if state != last_state:
                last_state = state
                yield f"id: {log_after}:{metric_after}\nevent: status\ndata: {json.dumps(state)}\n\n"
            if state["status"] in ("succeeded", "failed", "cancelled") and not logs and not metrics:
                yield f"id: {log_after}:{metric_after}\nevent: end\ndata: {json.dumps(state)}\n\n"
                return
            if not logs and not metrics:
                await asyncio.sleep(poll)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
