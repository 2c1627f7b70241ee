"""Evaluation jobs: create, list, get, cancel, logs, results side by side, download."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from backend import live
from backend.api import contract, streams
from backend.api.auth import CurrentUser
from backend.api.deps import DbRoute, SessionDep, SettingsDep
from backend.api.schemas import Count, DbId, Name, Tiles, UtcDateTime
from backend.core.fields import MAX_ITEMS
from backend.db.models import User
from backend.db.session import get_sessionmaker
from backend.queue import make_celery
from backend.services import benchmarks as benchmarks_svc
from backend.services import evaluations as svc
from backend.services import suites

router = APIRouter(prefix="/evaluations", tags=["evaluations"], route_class=DbRoute)


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: DbId | None = Field(None, description="a registered model (base)")
    job_id: DbId | None = Field(None, description="what a training job saved")
    checkpoint: Name | None = Field(None, description="with job_id: 'final' (default) or 'checkpoint-STEP'")


class MixturePart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: DbId
    name: Name | None = Field(None, description="its name in the results (default: the dataset's name)")
    max_dynamic_patch: Tiles | None = Field(None, description="its tile budget (empty: the model's)")


class EvalMixture(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: DbId | None = Field(None, description="the mixture this training job trained on")
    datasets: list[MixturePart] = Field(default_factory=list, max_length=MAX_ITEMS, description="or registered datasets")


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset_id: DbId | None = Field(None, description="one dataset's split")
    mixture: EvalMixture | None = Field(None, description="or a mixture: every dataset's held-out part, scored "
                                        "per dataset and overall")
    benchmarks: list[Name] | None = Field(None, max_length=MAX_ITEMS, description="or a benchmark suite: registered "
                                          "benchmarks (GET /api/benchmarks), each run with its own prompt, tiling, "
                                          "generation settings and metrics; one table (GET .../table)")
    split: Name = Field("validation", description="'validation' (the held-out split) or 'train'")
    models: list[ModelRef] = Field(max_length=MAX_ITEMS)
    metrics: list[Name] = Field(default_factory=list, max_length=100, description="empty: chosen from the data")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="max_new_tokens, batch_size, max_dynamic_patch, limit")


class EvaluationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    owner_id: int | None
    status: str
    dataset_id: int | None
    split: str
    mixture: dict[str, Any] | None
    benchmarks: dict[str, Any] | None
    models: list[dict[str, Any]]
    metrics: list[str]
    params: dict[str, Any]
    summary: list[dict[str, Any]]
    done: int
    total: int | None
    samples_per_second: float | None
    exit_code: int | None
    failure_reason: str | None
    run_dir: str | None
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None


@router.post("", response_model=EvaluationOut, status_code=201,
             responses={422: {"description": "invalid request; `errors` lists every problem"}})
def create_evaluation(body: EvaluationCreate, session: SessionDep, settings: SettingsDep,
                      user: CurrentUser):  # noqa: ANN201
    """Queue an evaluation of one or more models on a dataset split, on every held-out part of a
    mixture (scored per dataset and overall), or on a suite of registered benchmarks, on the same
    queue as training."""
    celery = make_celery(settings)

    def send(evaluation_id: int) -> str:
        return celery.send_task(svc.EVAL_TASK, args=[evaluation_id]).id

    refs = [r.model_dump(exclude_none=True) for r in body.models]
    mixture = body.mixture.model_dump(exclude_none=True) if body.mixture else None
    return svc.create_evaluation(session, user, dataset_id=body.dataset_id, split=body.split, models=refs,
                                 metrics=body.metrics, params=body.params, send=send, mixture=mixture,
                                 benchmarks=body.benchmarks, benchmark_store=benchmarks_svc.store(settings))


@router.get("", response_model=list[EvaluationOut])
def list_evaluations(session: SessionDep, user: CurrentUser) -> list:
    return svc.list_evaluations(session, user)


@router.get("/{evaluation_id}", response_model=EvaluationOut)
def get_evaluation(evaluation_id: DbId, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    return svc.get_evaluation(session, evaluation_id, user)


@router.post("/{evaluation_id}/cancel", response_model=EvaluationOut)
def cancel_evaluation(evaluation_id: DbId, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    ev = svc.request_cancel(session, evaluation_id, user)
    live.publish(evaluation_id, "evaluation")
    return ev


@router.get("/{evaluation_id}/logs")
def get_logs(evaluation_id: DbId, session: SessionDep, user: CurrentUser, after: Count = 0,
             limit: Count = 1000) -> list[dict]:
    """Log lines with ``seq`` greater than ``after`` (a cursor), oldest first."""
    svc.get_evaluation(session, evaluation_id, user)
    return [{"seq": r.seq, "stream": r.stream, "line": r.line}
            for r in svc.logs_after(session, evaluation_id, after, min(limit, 10000))]


@router.get("/{evaluation_id}/results")
def get_results(evaluation_id: DbId, session: SessionDep, user: CurrentUser, only_differences: bool = False,
                offset: Count = 0, limit: Count = 500) -> dict:
    """Per-model metrics and, per sample, every model's prediction side by side; with
    ``only_differences`` only the samples where the models' predictions differ."""
    return svc.results(session, evaluation_id, user, only_differences, offset, min(limit, 5000))


@router.get("/{evaluation_id}/table", responses={409: {"description": "no scores yet (not finished)"}},
            openapi_extra=contract.answers("application/json", "text/csv"))
def get_table(evaluation_id: DbId, session: SessionDep, user: CurrentUser,
              format: Name | None = None) -> Response:  # noqa: A002 - the query parameter's name
    """One table: rows are the benchmarks' figures (a suite; a mixture's datasets), columns the
    models, values as stored and as published (percent; MME points, OCRBench count). With
    ``format=csv`` or ``format=json``: the table as a file to download (the stored values)."""
    ev = svc.get_evaluation(session, evaluation_id, user)
    if format is None:
        return JSONResponse(suites.table(ev))
    body, media, name = suites.export(ev, format)
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/{evaluation_id}/download", openapi_extra=contract.answers("application/x-ndjson"))
def download(evaluation_id: DbId, session: SessionDep, user: CurrentUser) -> StreamingResponse:
    """Every per-sample output as JSON lines (one line per model and sample), summary first."""
    ev = svc.get_evaluation(session, evaluation_id, user)
    summary = {"evaluation_id": ev.id, "status": ev.status.value, "summary": ev.summary}
    labels = [m["label"] for m in ev.models]

    def lines() -> Iterator[str]:
        yield json.dumps(summary) + "\n"
        with get_sessionmaker()() as s:  # loaded at once: no connection held while the client reads
            rows = svc.samples(s, evaluation_id)
        for r in rows:
            yield json.dumps({"model": labels[r.model_index] if r.model_index < len(labels) else r.model_index,
                              "index": r.sample_index, "id": r.sample_id, "dataset": r.dataset,
                              "question": r.question,
                              "answers": r.answers, "prediction": r.prediction, "scores": r.scores},
                             ensure_ascii=False) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="evaluation-{ev.id}.jsonl"'})


def _check_visible(evaluation_id: int, user: User) -> None:
    with get_sessionmaker()() as s:
        svc.get_evaluation(s, evaluation_id, user)


def _poll(evaluation_id: int, cursors: list[int]) -> tuple[dict, list[list[dict]]]:
    with get_sessionmaker()() as s:
        ev = svc.get_evaluation(s, evaluation_id)
        state = {"status": ev.status.value, "done": ev.done, "total": ev.total,
                 "samples_per_second": ev.samples_per_second, "exit_code": ev.exit_code,
                 "failure_reason": ev.failure_reason, "summary": ev.summary}
        logs = [{"seq": r.seq, "stream": r.stream, "line": r.line}
                for r in svc.logs_after(s, evaluation_id, cursors[0], 500)]
    return state, [logs]


@router.get("/{evaluation_id}/events", openapi_extra=contract.answers("text/event-stream"))
async def evaluation_events(evaluation_id: DbId, request: Request, settings: SettingsDep,
                            user: CurrentUser, last_event_id: str | None = Header(None),
                            cursor: str | None = None) -> StreamingResponse:
    """Server-sent events, the same stream as for training jobs (:mod:`backend.api.streams`):
    ``log`` and ``status`` as they happen, then ``end``. The event id is the last log ``seq``;
    reconnect with ``Last-Event-ID`` (or ``?cursor=``)."""
    # In a worker thread with a session of its own: a blocking query on the event loop would
    # stall every request, and the stream must not hold a pooled connection for its life.
    await run_in_threadpool(_check_visible, evaluation_id, user)
    feed = streams.Feed("evaluation", evaluation_id, ("log",), lambda c: _poll(evaluation_id, c))
    return streams.stream_response(feed, request, settings.stream_poll_seconds, last_event_id or cursor)
