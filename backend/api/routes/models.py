from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from backend.api.auth import CurrentUser
from backend.api.deps import DbRoute, SessionDep, SettingsDep
from backend.api.schemas import DbId, ModelOut
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

    path: str = Field(description="a checkpoint folder on the server, under VLSTUDIO_DATA_ROOTS")
    name: str | None = Field(None, description="registry name; default: the folder's name")


class InspectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="a checkpoint folder on the server, under VLSTUDIO_DATA_ROOTS")


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


@router.post("/import", response_model=ModelOut, status_code=201,
             responses={403: {"description": "the path is outside VLSTUDIO_DATA_ROOTS"},
                        422: {"description": "not a usable checkpoint; the message says what is wrong"}})
def import_model(body: ImportRequest, session: SessionDep, settings: SettingsDep, user: CurrentUser):  # noqa: ANN201
    """Convert a released InternVL checkpoint (original remote-code layout) to the native
    format, or check a native ``-hf`` folder, and register it. Code in the folder never runs."""
    from backend.core.meta import MetaError, check_allowed
    from backend.services.users import Forbidden

    try:
        src = check_allowed(Path(body.path), settings.data_roots)
    except MetaError as e:
        raise Forbidden(str(e)) from None
    from worker.convert import import_checkpoint

    return svc.import_model(session, settings, src, body.name, user.id, import_checkpoint)
