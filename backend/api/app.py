"""The FastAPI application (OpenAPI at /docs). In the embedded mode the Gradio UI is
mounted at / by :mod:`backend.cli`."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from backend.api.routes import datasets, health, jobs, models, presets
from backend.db.migrate import upgrade_to_head
from backend.db.session import session_scope
from backend.services.errors import Conflict, DomainError, InvalidInput, NotFound
from backend.services.models import ensure_builtin_models
from backend.settings import get_settings

log = logging.getLogger("vlstudio.api")


def startup() -> None:
    settings = get_settings()
    settings.ensure_dirs()
    upgrade_to_head()
    with session_scope() as s:
        ensure_builtin_models(s, settings)


def create_app(run_startup: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        if run_startup:
            startup()
        yield

    app = FastAPI(title="vlstudio", version="0.1.0", lifespan=lifespan,
                  description="Fine-tuning studio for InternVL vision-language models")
    for r in (health.router, datasets.router, models.router, jobs.router, presets.router):
        app.include_router(r, prefix="/api")

    status_of = {NotFound: 404, InvalidInput: 422, Conflict: 409}

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        code = next((c for t, c in status_of.items() if isinstance(exc, t)), 400)
        return JSONResponse({"detail": exc.message, "errors": exc.details}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def request_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(x) for x in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never leak a stack trace to the client; it goes to the server log.
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal server error", "errors": []}, status_code=500)

    return app
