"""Model imports as background jobs (issue 13): ``POST /api/models/import`` records a
``model_imports`` row after the same checks as before; a worker's import runner
(:mod:`worker.model_imports`) claims it, converts with progress, registers the model, or records the
error; a cancel stops the conversion and leaves nothing behind. The API converts nothing and
needs no torch. The table is the queue (compare-and-set claims), as for jobs and chats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.core.clock import now
from backend.db.models import JobStatus, ModelImport, User
from backend.services import runs
from backend.services.errors import Conflict, NotFound
from backend.services.models import check_import
from backend.services.users import visible_to
from backend.settings import Settings

S, KIND = JobStatus, runs.MODEL_IMPORT
# The API's words for the lifecycle's states, as the import answered before it joined the
# lifecycle (clients poll for "done"): a claimed import is running from the start.
WORDS = {S.queued: "queued", S.starting: "running", S.running: "running", S.stopping: "cancelling",
         S.succeeded: "done", S.failed: "failed", S.cancelled: "cancelled"}
FINISHED = ("done", "failed", "cancelled")


def submit(session: Session, settings: Settings, src: Path, name: str | None, owner_id: int | None) -> ModelImport:
    name, _ = check_import(session, settings, src, name)
    active = (S.queued, *runs.ACTIVE)
    if session.scalar(select(ModelImport).where(ModelImport.name == name, ModelImport.status.in_(active))):
        raise Conflict(f"a model named {name!r} is being imported already")
    imp = ModelImport(owner_id=owner_id, status=S.queued, src=str(src), name=name, progress=0.0)
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
    """The lifecycle's cancel; asking again once cancelled answers with its state, as before."""
    imp = get(session, import_id, user)
    if imp.status in (S.succeeded, S.failed):
        raise Conflict(f"model import {import_id} is {WORDS[imp.status]}; nothing to cancel")
    if imp.status != S.cancelled:
        runs.request_cancel(session, KIND, imp)
    return get(session, import_id, user)


def claim(session: Session, worker: str) -> ModelImport | None:
    for import_id in session.scalars(select(ModelImport.id).where(ModelImport.status == S.queued)
                                     .order_by(ModelImport.id).limit(10)):
        if runs.claim(session, KIND, import_id, worker):
            return get(session, import_id)
    return None


def report(session: Session, import_id: int, progress: float, message: str) -> bool:
    """Store progress (and the heartbeat); False when a cancel was asked for (the conversion
    then stops)."""
    t = ModelImport
    session.execute(update(t).where(t.id == import_id, t.status.in_(runs.ACTIVE))
                    .values(progress=progress, message=message, heartbeat_at=now()))
    runs.mark_running(session, KIND, import_id)
    session.commit()
    return get(session, import_id).status == S.running


def finish(session: Session, import_id: int, status: JobStatus, **values: Any) -> bool:
    """The runner's verdict; False if the import had ended meanwhile (the recovery sweep failed
    it while this worker was frozen: its reason stays)."""
    imp = get(session, import_id)
    if imp.status.finished:
        return False
    runs.mark_running(session, KIND, import_id)  # done before its first report: it ran all the same
    session.commit()
    try:
        return runs.transition(session, KIND, import_id, status, **values)
    except Conflict:
        return False  # ended by another between the check and the transition


def recover_lost(session: Session, timeout_s: float) -> list[int]:
    """Imports whose worker went silent: the one sweep of every kind of run."""
    return runs.recover_lost(session, KIND, timeout_s)


def as_dict(imp: ModelImport) -> dict[str, Any]:
    failed = imp.status == S.failed
    message = imp.message or (imp.failure_reason if imp.status == S.cancelled else None)
    return {"id": imp.id, "status": WORDS[imp.status], "src": imp.src, "name": imp.name, "progress": imp.progress,
            "message": message, "model_id": imp.model_id, "error": imp.failure_reason if failed else None,
            "created_at": imp.created_at, "finished_at": imp.finished_at}
