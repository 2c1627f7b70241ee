from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import anyio.from_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from backend import live
from backend.api import contract, streams
from backend.api.auth import CurrentUser
from backend.api.deadline import Deadline
from backend.api.deps import DbRoute, SessionDep, SettingsDep
from backend.api.guards import ARRIVED
from backend.api.schemas import Count, DbId, JobCreate, JobOut, LogLineOut, MetricOut, PathText
from backend.core import presets
from backend.core.fields import MAX_ITEMS
from backend.db.models import JobStatus, User
from backend.db.session import get_sessionmaker
from backend.queue import wake_workers
from backend.services import job_compare, memory
from backend.services import jobs as svc
from backend.services.errors import InvalidInput, NotFound
from backend.services.models import get_model

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=DbRoute)


class JobDetail(JobOut):
    last_lines: list[str] = []
    run_files: list[str] = []


@router.post("", response_model=JobOut, status_code=201,
             responses={422: {"description": "invalid spec, too many GPUs, or cannot fit; `errors` lists every "
                                              "problem"}})
def create_job(body: JobCreate, request: Request, response: Response, session: SessionDep,  # noqa: PLR0913
               settings: SettingsDep, user: CurrentUser,
               idempotency_key: str | None = Header(None, max_length=200, description=(
                   "retrying with the same key returns the job the first attempt created (200), never a second"))):
    """Submit a job. Nothing is recorded for a request whose client disconnected, or that waited
    past VLSTUDIO_REQUEST_DEADLINE_SECONDS (503: submit again, with the same Idempotency-Key)."""
    job = svc.create_job(session, dataset_id=body.dataset_id, mixture=body.mixture, model_id=body.model_id, preset=body.preset,
                         overrides=body.hyperparameters, send=wake_workers, owner=user, priority=body.priority,
                         requeue_on_failure=body.requeue_on_failure, idempotency_key=idempotency_key,
                         still_wanted=lambda: _gone(request, settings.request_deadline_seconds))
    if getattr(job, "replayed", False):
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return job


def _gone(request: Request, deadline_s: float) -> str | None:
    """Why the submission's client no longer waits for it (None: it does). Runs in the route's thread."""
    waited = time.monotonic() - request.scope.get(ARRIVED, time.monotonic())
    if waited > deadline_s:
        return f"the request waited {waited:.0f} s, past the {deadline_s:.0f} s deadline; submit it again"
    if anyio.from_thread.run(request.is_disconnected):
        return "the client disconnected before the job was recorded"
    return None


@router.post("/estimate")
def estimate_memory(body: JobCreate, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """GPU memory per device for this spec (formula in docs/jobs.md), without submitting it."""
    model = get_model(session, body.model_id, user)
    try:
        hyper = presets.resolve(body.preset, body.hyperparameters, svc.model_tiling(model))
    except (KeyError, ValueError) as e:
        raise InvalidInput(f"invalid spec: {e}") from None
    if not hyper.gpus:
        return {"estimate": None, "reason": "the job trains on CPUs (gpus 0): there is no GPU memory to "
                                            "estimate; set gpus to see the estimate per GPU"}
    arch = memory.arch_for(model.info or {}, model.path)
    if arch is None:
        return {"estimate": None, "reason": f"the shapes of model {model.name!r} are unknown (no shapes recorded "
                                            "at import and no readable config.json in its folder)"}
    return {"estimate": memory.estimate(arch, hyper), "suggestions": memory.suggestions(hyper)}


@router.get("", response_model=list[JobOut])
def list_jobs(session: SessionDep, user: CurrentUser, status: JobStatus | None = None, limit: Count = 200) -> list:
    jobs = svc.list_jobs(session, user, status, min(max(limit, 1), 1000))
    finish, warned = job_compare.finish_times(session, jobs), svc.warnings_of(session, jobs)
    phases = job_compare.phases(session, jobs)
    return [JobOut.model_validate(j).model_copy(update={**_eta(finish.get(j.id)), "warnings": warned.get(j.id, []),
                                                        **_phase(phases.get(j.id))})
            for j in jobs]


def _eta(at: datetime | None) -> dict[str, Any]:
    """The API's one ETA: the finish instant and the seconds left to it now."""
    if at is None:
        return {}
    return {"eta_at": at, "eta_seconds": max(0.0, (at - datetime.now(UTC)).total_seconds())}


def _phase(found: tuple[str, Any] | None) -> dict[str, Any]:
    return {"phase": found[0], "phase_since": found[1]} if found else {}


@router.get("/compare", responses={422: {"description": "not 2 to 8 distinct job ids"}})
def compare_jobs(session: SessionDep, user: CurrentUser, deadline: Deadline,
                 ids: Annotated[list[DbId], Query(max_length=MAX_ITEMS)]) -> dict[str, Any]:
    """Several runs side by side (``?ids=1&ids=2``): each job's curves (loss, eval loss, learning
    rate, throughput by step), the hyperparameters whose values differ, and the evaluation
    scores of every succeeded evaluation that ran one of them."""
    with deadline.bound():
        return job_compare.compare(session, user, ids)


def _run_files(run_dir: str | None) -> list[str]:
    if not run_dir or not Path(run_dir).is_dir():
        return []
    root = Path(run_dir)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:2000]


@router.get("/{job_id}", response_model=JobDetail)
def get_job(job_id: DbId, session: SessionDep, user: CurrentUser) -> JobDetail:
    """The job, its last log lines (why it failed), and the files of its run folder."""
    job = svc.get_job(session, job_id, user)
    return JobDetail.model_validate(job).model_copy(
        update={"last_lines": svc.last_lines(session, job_id), "run_files": _run_files(job.run_dir),
                **_eta(job_compare.finish_times(session, [job]).get(job.id)),
                **_phase(job_compare.phases(session, [job]).get(job.id)),
                "warnings": svc.warnings_of(session, [job]).get(job.id, [])})


@router.get("/{job_id}/files/{path:path}", openapi_extra=contract.answers("*/*"))
def download_file(job_id: DbId, path: PathText, session: SessionDep, user: CurrentUser) -> FileResponse:
    """A file of the run folder (spec.json, command.txt, checkpoints, the final model...)."""
    job = svc.get_job(session, job_id, user)
    if not job.run_dir:
        raise NotFound(f"job {job_id} has no run folder yet")
    root = Path(job.run_dir).resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise NotFound(f"{path}: no such file in the run folder of job {job_id}")
    return FileResponse(target, filename=target.name)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: DbId, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    """Cooperative cancel: the trainer gets SIGTERM, saves a checkpoint and exits."""
    job = svc.request_cancel(session, job_id, user)
    live.publish(job_id)
    return job


@router.post("/{job_id}/resume", response_model=JobOut, status_code=201)
def resume_job(job_id: DbId, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    """A new job continuing a cancelled or failed one from its last checkpoint."""
    return svc.resume_job(session, job_id, wake_workers, user)


@router.post("/{job_id}/retry", response_model=JobOut, status_code=201)
def retry_job(job_id: DbId, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    """A new job with the same spec, from scratch."""
    return svc.retry_job(session, job_id, wake_workers, user)


@router.get("/{job_id}/logs", response_model=list[LogLineOut])
def get_logs(job_id: DbId, session: SessionDep, user: CurrentUser, after: Count = 0, limit: Count = 1000) -> list:
    """Log lines with ``seq`` greater than ``after`` (a cursor), oldest first."""
    svc.get_job(session, job_id, user)
    return svc.logs_after(session, job_id, after, min(limit, 10000))


@router.get("/{job_id}/metrics", response_model=list[MetricOut])
def get_metrics(job_id: DbId, session: SessionDep, user: CurrentUser, after: Count = 0) -> list:
    svc.get_job(session, job_id, user)
    return svc.metrics_after(session, job_id, after)


def _check_visible(job_id: int, user: User) -> None:
    with get_sessionmaker()() as s:
        svc.get_job(s, job_id, user)


def _poll(job_id: int, cursors: list[int]) -> tuple[dict, list[list[dict]]]:
    log_after, metric_after = cursors
    with get_sessionmaker()() as s:
        job = svc.get_job(s, job_id)
        at = job_compare.finish_times(s, [job]).get(job_id)
        # the finish instant, not seconds left: it changes with a step, so it is news only then
        state = {"status": job.status.value, "step": job.step, "total_steps": job.total_steps,
                 "exit_code": job.exit_code, "failure_reason": job.failure_reason,
                 "eta_at": at.isoformat() if at else None}
        logs = [{"seq": r.seq, "stream": r.stream, "line": r.line} for r in svc.logs_after(s, job_id, log_after, 500)]
        metrics = [{"seq": m.seq, "step": m.step, "loss": m.loss, "values": m.values}
                   for m in svc.metrics_after(s, job_id, metric_after, 500)]
    return state, [logs, metrics]


@router.get("/{job_id}/events", openapi_extra=contract.answers("text/event-stream"))
async def job_events(job_id: DbId, request: Request, settings: SettingsDep, user: CurrentUser,
                     last_event_id: str | None = Header(None), cursor: str | None = None) -> StreamingResponse:
    """Server-sent events: ``log``, ``metric`` and ``status`` as they happen, then ``end``.

    Every event id is the cursor ``LOGSEQ:METRICSEQ``; reconnect with ``Last-Event-ID`` (or
    ``?cursor=``) to resume without gaps. A browser's EventSource signs its URL instead of a
    token (``?sig=``, ``POST /api/auth/link``)."""
    # In a worker thread with a session of its own: a blocking query on the event loop would
    # stall every request, and the stream must not hold a pooled connection for its life.
    await run_in_threadpool(_check_visible, job_id, user)
    feed = streams.Feed("job", job_id, ("log", "metric"), lambda c: _poll(job_id, c))
    return streams.stream_response(feed, request, settings.stream_poll_seconds, last_event_id or cursor)
