from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.api.auth import current_user
from backend.api.deps import DbRoute, SessionDep, SettingsDep
from backend.api.schemas import DbId, Name
from backend.core import presets
from backend.core.spec import Hyperparameters
from backend.services.errors import InvalidInput
from backend.services.jobs import model_tiling
from backend.services.models import get_model

router = APIRouter(prefix="/presets", tags=["presets"], route_class=DbRoute)


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: Name = "demo"
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset")
    model_id: DbId | None = Field(None, description="fill what the preset leaves to the model (its tiling) from "
                                  "this model's card")


@router.get("")
def list_presets() -> dict:
    """The presets (the seed's scripts as data) and the defaults and schema of every switch (an
    empty tiling switch is the model's own)."""
    return {"presets": presets.PRESETS, "defaults": Hyperparameters().model_dump(mode="json"),
            "schema": Hyperparameters.model_json_schema()}


@router.post("/resolve", responses={422: {"description": "every problem of the combination"}})
def resolve_preset(body: ResolveRequest, request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    """A preset with the user's overrides (over ``model_id``'s own tiling), validated, plus the
    derived values (gradient accumulation, effective global batch, precision...) the UI shows
    while the user edits."""
    tiling = None
    if body.model_id is not None:  # a model is the user's to see (without one, no login is needed)
        tiling = model_tiling(get_model(session, body.model_id, current_user(request, session, settings)))
    try:
        h = presets.resolve(body.preset, body.hyperparameters, tiling)
    except KeyError as e:
        raise InvalidInput(str(e.args[0]), [{"field": "preset", "message": str(e.args[0])}]) from None
    except ValidationError:
        raise InvalidInput("invalid hyperparameters", presets.problems(body.preset, body.hyperparameters,
                                                                        tiling)) from None
    return {"hyperparameters": h.model_dump(mode="json"), "derived": h.derived()}
