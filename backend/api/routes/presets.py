from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.api.deps import DbRoute
from backend.core import presets
from backend.core.spec import Hyperparameters
from backend.services.errors import InvalidInput

router = APIRouter(prefix="/presets", tags=["presets"], route_class=DbRoute)


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = "demo"
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset")


@router.get("")
def list_presets() -> dict:
    """The presets (the seed's scripts as data) and the defaults and schema of every switch."""
    return {"presets": presets.PRESETS, "defaults": Hyperparameters().model_dump(mode="json"),
            "schema": Hyperparameters.model_json_schema()}


@router.post("/resolve", responses={422: {"description": "every problem of the combination"}})
def resolve_preset(body: ResolveRequest) -> dict:
    """A preset with the user's overrides, validated, plus the derived values (gradient
    accumulation, effective global batch, precision...) the UI shows while the user edits."""
    try:
        h = presets.resolve(body.preset, body.hyperparameters)
    except KeyError as e:
        raise InvalidInput(str(e.args[0]), [{"field": "preset", "message": str(e.args[0])}]) from None
    except ValidationError:
        raise InvalidInput("invalid hyperparameters", presets.problems(body.preset, body.hyperparameters)) from None
    return {"hyperparameters": h.model_dump(mode="json"), "derived": h.derived()}
