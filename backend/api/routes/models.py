from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from backend import live
from backend.api.auth import CurrentUser
from backend.api.deps import DbRoute, SessionDep, SettingsDep
from backend.api.schemas import DbId, ModelOut, Name, ServerPath
from backend.db.session import get_sessionmaker
from backend.services import model_imports as imports_svc
from backend.services import models as svc

router = APIRouter(prefix="/models", tags=["models"], route_class=DbRoute)


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep, user: CurrentUser) -> list:
    return svc.list_models(session, user)


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: DbId, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    return svc.get_model(session, model_id, user)


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: ServerPath = Field(description="a checkpoint folder on the server, under VLSTUDIO_DATA_ROOTS")
    name: Name | None = Field(None, description="registry name; default: the folder's name")
    wait: bool = Field(True, description="answer when the worker is done (201 + the model); false: 202 + "
                                         "the import job at once")


class InspectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: ServerPath = Field(description="a checkpoint folder on the server, under VLSTUDIO_DATA_ROOTS")


@router.post("/inspect", responses={403: {"description": "the path is outside VLSTUDIO_DATA_ROOTS"},
                                    422: {"description": "not a checkpoint folder; the message says why"}})
def inspect_model(body: InspectRequest, settings: SettingsDep, user: CurrentUser) -> dict:
    """What a checkpoint folder is before importing it (``vlstudio models info``): format, family,
    template, parameter counts by part, tiling settings. Reads its data files only."""
    from backend.core.meta import MetaError, check_allowed
    from backend.core.model_folder import ModelFolderError
    from backend.core.model_summary import summarize
    from backend.services.errors import InvalidInput
    from backend.services.users import Forbidden

    try:
        src = check_allowed(Path(body.path), settings.data_roots)
    except MetaError as e:
        raise Forbidden(str(e)) from None
    try:
        return summarize(src)
    except ModelFolderError as e:
        raise InvalidInput(str(e), [{"field": "path", "message": str(e)}]) from None


@router.post("/import", status_code=201,
             responses={201: {"description": "with wait (default): the registered model (as GET /models/{id})"},
                        202: {"description": "wait=false: the import job (poll GET /models/imports/{id})"},
                        403: {"description": "the path is outside VLSTUDIO_DATA_ROOTS"},
                        409: {"description": "the name is taken or being imported"},
                        422: {"description": "not a usable checkpoint; the message says what is wrong"}})
async def import_model(body: ImportRequest, request: Request, session: SessionDep, settings: SettingsDep,
                       user: CurrentUser):  # noqa: ANN201
    """Convert a released InternVL checkpoint (original remote-code layout) to the native
    format, or check a native ``-hf`` folder, and register it. Code in the folder never runs.
    A worker does the conversion (a background job with progress and cancel); with ``wait``
    (the default) the request returns when it is done, as before."""
    from backend.core.meta import MetaError, check_allowed
    from backend.services.users import Forbidden

    try:
        src = check_allowed(Path(body.path), settings.data_roots)
    except MetaError as e:
        raise Forbidden(str(e)) from None
    imp = await run_in_threadpool(imports_svc.submit, session, settings, src, body.name, user.id if user else None)
    import_id = imp.id
    session.close()  # do not hold a pooled connection while a worker converts
    if not body.wait:
        return JSONResponse(jsonable_encoder(imports_svc.as_dict(imp)), status_code=202)
    async with live.Listener(import_id, "import") as listener:
        while not await request.is_disconnected():
            state = await run_in_threadpool(_import_state, import_id)
            if state["status"] == "done":
                return await run_in_threadpool(_model_out, state["model_id"])
            if state["status"] in imports_svc.FINISHED:
                detail = state["error"] or state["message"] or state["status"]
                return JSONResponse({"detail": detail, "errors": [], "import": jsonable_encoder(state)},
                                    status_code=_failure_status(state))
            await listener.wait(1.0 if listener.active else settings.stream_poll_seconds)
    return None


def _failure_status(state: dict) -> int:
    """What the import's end means over HTTP: its error's own status; a failure without one (its
    worker was lost) is the server's; a cancel is a conflict with the request."""
    return state.get("error_status") or (500 if state["status"] == "failed" else 409)


def _import_state(import_id: int) -> dict:
    with get_sessionmaker()() as s:
        imp = imports_svc.get(s, import_id)
        return {**imports_svc.as_dict(imp), "error_status": imp.error_status}


def _model_out(model_id: int) -> dict:
    with get_sessionmaker()() as s:
        return ModelOut.model_validate(svc.get_model(s, model_id)).model_dump()


@router.get("/imports/{import_id}")
def get_import(import_id: DbId, session: SessionDep, user: CurrentUser) -> dict:
    """A model import: status (queued, running, cancelling, done, failed, cancelled), progress
    (0..1, weights written), message, and the model id once registered."""
    return imports_svc.as_dict(imports_svc.get(session, import_id, user))


@router.post("/imports/{import_id}/cancel")
def cancel_import(import_id: DbId, session: SessionDep, user: CurrentUser) -> dict:
    """Stop an import: queued ones end at once; a running conversion stops at its next progress
    report and leaves no folder and no model behind."""
    imp = imports_svc.request_cancel(session, import_id, user)
    live.publish(import_id, "import")
    return imports_svc.as_dict(imp)
