from __future__ import annotations

from fastapi import APIRouter

from backend.api.auth import CurrentUser
from backend.api.deps import SessionDep
from backend.api.schemas import ModelOut
from backend.services import models as svc

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep, user: CurrentUser) -> list:
    return svc.list_models(session, user)


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: int, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    return svc.get_model(session, model_id, user)
