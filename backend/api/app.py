"""The FastAPI application (OpenAPI at /docs). In the embedded mode the Gradio UI is
mounted at / by :mod:`backend.cli`."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager, suppress

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.api import contract
from backend.api.auth import UiUploadLogin
from backend.api.guards import UPLOAD_ROUTES, Admission, BodyLimit, install_log_redaction
from backend.api.routes import (
    auth,
    benchmarks,
    datasets,
    evaluations,
    health,
    jobs,
    meta,
    metrics,
    models,
    playground,
    presets,
    users,
)
from backend.db.migrate import upgrade_to_head
from backend.db.session import session_scope
from backend.queue import wake_workers
from backend.services.dataset_sweep import sweep_stale_validations
from backend.services.errors import Abandoned, Conflict, DomainError, InvalidInput, NotFound
from backend.services.evaluations import recover_lost_evaluations
from backend.services.jobs import recover_lost_jobs
from backend.services.models import ensure_builtin_models
from backend.services.users import Forbidden, TooManyAttempts, Unauthorized, ensure_first_admin
from backend.settings import get_settings

log = logging.getLogger("vlstudio.api")


def startup() -> None:
    settings = get_settings()
    settings.check_secret()
    settings.ensure_dirs()
    upgrade_to_head()
    with session_scope() as s:
        ensure_builtin_models(s, settings)
        ensure_first_admin(s, settings)


async def sweep_lost_jobs() -> None:
    """Jobs whose worker died are found even when no worker is left to notice."""
    settings = get_settings()
    failed_at: float | None = None
    while True:
        await asyncio.sleep(settings.heartbeat_seconds)
        # Right after a database outage every heartbeat is old: give the workers one timeout
        # to write theirs before calling their runs lost.
        if failed_at is not None and time.monotonic() - failed_at < settings.heartbeat_timeout_seconds:
            continue
        try:
            await asyncio.to_thread(_sweep_once, settings.heartbeat_timeout_seconds)
        except Exception:  # a database outage must not end the sweeper
            failed_at = time.monotonic()
            log.exception("recovery sweep failed")


def _sweep_once(timeout_s: float) -> None:
    with session_scope() as s:
        lost = recover_lost_jobs(s, timeout_s, wake_workers)
        lost += [f"evaluation {i}" for i in recover_lost_evaluations(s, timeout_s)]
        lost += [f"dataset {i} (validation)" for i in sweep_stale_validations(s, get_settings(), timeout_s)]
    if lost:
        log.warning("jobs whose worker went silent were failed: %s", lost)


def create_app(run_startup: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        sweeper = None
        # The API's thread pool, and the database pool sized from it (backend.db.session).
        anyio.to_thread.current_default_thread_limiter().total_tokens = get_settings().api_threads
        if run_startup:
            startup()
            sweeper = asyncio.create_task(sweep_lost_jobs())
        yield
        if sweeper is not None:
            sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await sweeper

    app = FastAPI(title="vlstudio", version="0.1.0", lifespan=lifespan,
                  description="Fine-tuning studio for InternVL vision-language models")
    for r in (health.router, datasets.router, models.router, jobs.router, presets.router, auth.router, users.router):
        app.include_router(r, prefix="/api")
    for r in (evaluations.router, playground.router, benchmarks.router):  # evaluation, playground, benchmarks
        app.include_router(r, prefix="/api")
    app.include_router(meta.router, prefix="/api")  # issue 3: the meta file
    app.include_router(metrics.router)

    _add_guards(app)
    _add_error_handlers(app)
    contract.install(app)
    return app


def _body_limit(scope: dict) -> int:
    # Uploads by route, never by content type: a multipart body to a JSON route is still JSON-sized.
    s = get_settings()
    return s.max_upload_bytes if (scope.get("method"), scope.get("path")) in UPLOAD_ROUTES else s.max_request_bytes


def _add_guards(app: FastAPI) -> None:
    s = get_settings()
    install_log_redaction()
    # Added last = outermost: refuse at capacity first, then count the body's bytes, then ask
    # the UI's upload route for a login before it reads anything.
    app.add_middleware(UiUploadLogin)
    app.add_middleware(BodyLimit, limit_for=_body_limit)
    app.add_middleware(Admission, max_requests=s.max_inflight_requests, max_streams=s.max_event_streams)


def _add_error_handlers(app: FastAPI) -> None:
    status_of = {NotFound: 404, InvalidInput: 422, Conflict: 409, Unauthorized: 401, Forbidden: 403,
                 TooManyAttempts: 429, Abandoned: 503}

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        code = next((c for t, c in status_of.items() if isinstance(exc, t)), 400)
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        if isinstance(exc, TooManyAttempts | Abandoned):
            headers = {"Retry-After": str(getattr(exc, "retry_after", 2))}
        return JSONResponse({"detail": exc.message, "errors": exc.details}, status_code=code, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (no such route, method not allowed, a malformed multipart body)
        # in the one error shape
        return JSONResponse({"detail": str(exc.detail), "errors": []}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def request_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(x) for x in e["loc"]), "message": e["msg"].removeprefix("Value error, ")}
                  for e in exc.errors()]
        said = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        return JSONResponse({"detail": f"invalid request: {said}{more}", "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never leak a stack trace to the client; it goes to the server log.
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal server error", "errors": []}, status_code=500)

    @app.exception_handler(SATimeout)
    @app.exception_handler(OperationalError)
    async def db_unavailable(_: Request, exc: Exception) -> JSONResponse:
        # No free pooled connection in time, or the database is down: the client may retry.
        log.warning("database unavailable: %s", exc)
        return JSONResponse({"detail": "the database is busy or unreachable; retry shortly", "errors": []},
                            status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(DataError)
    async def out_of_range(_: Request, exc: DataError) -> JSONResponse:
        # A value the column cannot hold (an id past 2^31...): the input's fault, not the server's.
        return JSONResponse({"detail": "a value is out of range for the database", "errors": []}, status_code=422)
