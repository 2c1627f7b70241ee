from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from backend.api.deps import DbRoute, SessionDep, SettingsDep

router = APIRouter(tags=["health"], route_class=DbRoute)


@router.get("/health")
def health(session: SessionDep, settings: SettingsDep) -> dict:
    session.execute(text("SELECT 1"))
    return {"status": "ok", "database": session.get_bind().dialect.name,
            "broker": "filesystem" if settings.embedded_broker else settings.celery_broker_url.split(":")[0]}
