"""Model imports as background jobs (issue 13): ``POST /api/models/import`` records a
``model_imports`` row after the same checks as before; a worker's import runner
(:mod:`worker.model_imports`) claims it, converts with progress, registers the model, or records the
error; a cancel stops the conversion and leaves nothing behind. The API converts nothing and
needs no torch. The table is the queue (compare-and-set claims), as for jobs and chats.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.core.clock import now
from backend.db.models import ModelImport, User
from backend.services.errors import Conflict, NotFound
from backend.services.models import check_import
from backend.services.users import visible_to
from backend.settings import Settings

ACTIVE = ("queued", "running", "cancelling")
FINISHED = ("done", "failed", "cancelled")


def submit(session: Session, settings: Settings, src: Path, name: str | None, owner_id: int | None) -> ModelImport:
    name, _ = check_import(session, settings, src, name)
    if session.scalar(select(ModelImport).where(ModelImport.name == name, ModelImport.status.in_(ACTIVE))):
        raise Conflict(f"a model named {name!r} is being imported already")
    imp = ModelImport(owner_id=owner_id, status="queued", src=str(src), name=name, progress=0.0)
    session.add(imp)
    session.commit()
    return imp


def get(session: Session, import_id: int, user: User | None = None) -> ModelImport:
    imp = session.get(ModelImport, import_id)
    if imp is None or not visible_to(user, imp.owner_id):
        raise NotFound(f"model import {import_id} not found")
    session.refresh(imp)
    return imp


def request_cancel(session: Session, import_id: int, user: User | None = None) -> ModelImport:
    imp = get(session, import_id, user)
    if imp.status == "queued":
        _set(session, import_id, "queued", status="cancelled", finished_at=now(), message="cancelled before it started")
    elif imp.status == "running":
        _set(session, import_id, "running", status="cancelling")
    elif imp.status not in ("cancelling", "cancelled"):
        raise Conflict(f"model import {import_id} is {imp.status}; nothing to cancel")
    return get(session, import_id, user)


def _set(session: Session, import_id: int, current: str | tuple[str, ...], **values: Any) -> bool:
    states = (current,) if isinstance(current, str) else current
    res = session.execute(update(ModelImport).where(ModelImport.id == import_id, ModelImport.status.in_(states))
                          .values(**values))
    session.commit()
    return res.rowcount == 1


def claim(session: Session, worker: str) -> ModelImport | None:
    for import_id in session.scalars(select(ModelImport.id).where(ModelImport.status == "queued")
                                     .order_by(ModelImport.id).limit(10)):
        if _set(session, import_id, "queued", status="running", worker=worker, heartbeat_at=now()):
            return get(session, import_id)
    return None


def report(session: Session, import_id: int, progress: float, message: str) -> bool:
    """Store progress; False when a cancel was asked for (the conversion then stops)."""
    _set(session, import_id, ("running", "cancelling"), progress=progress, message=message, heartbeat_at=now())
    return get(session, import_id).status == "running"


def finish(session: Session, import_id: int, status: str, **values: Any) -> None:
    _set(session, import_id, ACTIVE, status=status, finished_at=now(), **values)


def recover_stale(session: Session, timeout_s: float) -> list[int]:
    cutoff = now() - timedelta(seconds=timeout_s)
    ids = list(session.scalars(select(ModelImport.id).where(ModelImport.status.in_(("running", "cancelling")),
                                                           ModelImport.heartbeat_at < cutoff)))
    for import_id in ids:
        finish(session, import_id, "failed", error="the worker converting it stopped answering", error_status=500)
    return ids


def as_dict(imp: ModelImport) -> dict[str, Any]:
    return {"id": imp.id, "status": imp.status, "src": imp.src, "name": imp.name, "progress": imp.progress,
            "message": imp.message, "model_id": imp.model_id, "error": imp.error, "created_at": imp.created_at,
            "finished_at": imp.finished_at}
