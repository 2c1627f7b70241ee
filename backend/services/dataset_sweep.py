"""Background validations whose API process stopped (issue 18).

A validation runs on a thread of one API process. Every sweep (the API's recovery loop) that
process beats ``heartbeat_at`` of the rows it validates; a row still ``validating`` whose beat
is older than the timeout belongs to a process that died: it is failed, saying so, and its
staged files under DATA/datasets are removed. The claim is a conditional UPDATE, so with
several API replicas exactly one of them sweeps a row, and no replica touches a row another
one is still beating."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend.db.models import Dataset
from backend.services import dataset_checks
from backend.settings import Settings

REASON = "validation stopped: the API process running it stopped before it finished; upload it again"


def beat(session: Session, ids: list[int], now: datetime) -> None:
    if ids:
        session.execute(update(Dataset).where(Dataset.id.in_(ids), Dataset.status == "validating")
                        .values(heartbeat_at=now))
        session.commit()


def staged_folder(settings: Settings, root: str) -> Path | None:
    """The folder an upload was placed in (DATA/datasets/<id>); None for a dataset registered
    in place on shared storage, whose files are the user's and are never removed."""
    base = (settings.data_path / "datasets").resolve()
    p = Path(root).resolve()
    if not p.is_relative_to(base) or p == base:
        return None
    return base / p.relative_to(base).parts[0]


def sweep_stale_validations(session: Session, settings: Settings, timeout_s: float) -> list[int]:
    """Beat this process's validations, fail the ones nobody beats any more; their ids."""
    now = datetime.now(UTC)
    mine = dataset_checks.running_ids()
    beat(session, mine, now)
    last_seen = func.coalesce(Dataset.heartbeat_at, Dataset.created_at)
    stale = (Dataset.status == "validating", last_seen < now - timedelta(seconds=timeout_s))
    swept = []
    for ds in list(session.scalars(select(Dataset).where(*stale))):
        if ds.id in mine:
            continue
        claimed = session.execute(update(Dataset).where(Dataset.id == ds.id, *stale).values(
            status="failed", progress=1.0, num_samples=0, num_images=0,
            report={"ok": False, "message": REASON})).rowcount
        session.commit()
        if claimed:
            swept.append(ds.id)
            folder = staged_folder(settings, ds.root)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    return swept
