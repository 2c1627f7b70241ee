from __future__ import annotations

from fastapi import APIRouter

from backend.core.presets import PRESETS
from backend.core.spec import Hyperparameters

router = APIRouter(prefix="/presets", tags=["presets"])


@router.get("")
def list_presets() -> dict:
    """The presets (the seed's scripts as data) and the defaults and schema of every switch."""
    return {"presets": PRESETS, "defaults": Hyperparameters().model_dump(mode="json"),
            "schema": Hyperparameters.model_json_schema()}
