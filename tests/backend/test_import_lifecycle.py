"""Model imports are a kind of run of the one lifecycle (issue 24): claimed, cancelled and
recovered by backend/services/runs.py like training jobs and evaluations, with the lifecycle's
states in the table (migration 0021 maps the old words both ways on SQLite and PostgreSQL) and
the import's own words still at the API."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from backend.core.clock import now
from backend.db.models import JobStatus, ModelImport
from backend.db.session import session_scope
from backend.services import model_imports
from backend.settings import get_settings
from worker import scheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))
from convert_helpers import write_original  # noqa: E402

OLD_WORDS = ["queued", "running", "cancelling", "done", "failed", "cancelled"]
STATES = ["queued", "running", "stopping", "succeeded", "failed", "cancelled"]


def test_the_migration_maps_the_import_words_to_the_lifecycle_and_back(migration_db):
    engine, migrate = migration_db
    migrate("0020_eval_suite")
    at = now() - timedelta(minutes=5)
    with engine.begin() as conn:
        for i, word in enumerate(OLD_WORDS, 1):
            conn.execute(text("INSERT INTO model_imports (id, status, src, name, progress, error, created_at, "
                              "heartbeat_at) VALUES (:id, :status, '/src', :name, 0.5, :error, :at, :at)"),
                         {"id": i, "status": word, "name": f"m{i}", "error": "bad" if word == "failed" else None,
                          "at": at})
    migrate("head")
    with Session(engine) as s:
        imports = [s.get(ModelImport, i) for i in range(1, len(OLD_WORDS) + 1)]
        assert [imp.status.value for imp in imports] == STATES
        assert [model_imports.as_dict(imp)["status"] for imp in imports] == OLD_WORDS  # the API's answer
        assert [imp.failure_reason for imp in imports] == [None] * 4 + ["bad", None]
        assert model_imports.as_dict(imports[4])["error"] == "bad"
        assert all(imp.updated_at is not None for imp in imports)
        s.execute(update(ModelImport).where(ModelImport.id == 1).values(status=JobStatus.starting))  # a claim
        s.commit()
    migrate("0020_eval_suite", down=True)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, error FROM model_imports ORDER BY id")).all()
    assert [r.status for r in rows] == ["running", *OLD_WORDS[1:]]
    assert [r.error for r in rows] == [None] * 4 + ["bad", None]
    migrate("head")  # and up again


def queued_import(api, shared: Path, name: str) -> int:
    """An import no runner takes (none runs in this test)."""
    write_original(shared / name, "phi3")
    r = api.post("/api/models/import", json={"path": str(shared / name), "wait": False})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_an_import_is_cancelled_through_the_one_request_cancel(shared, api):
    """Queued: cancelled at once with the lifecycle's reason; claimed: stopping (the API says
    cancelling) until the runner sees it; asking again answers with the state, as before."""
    first, second = queued_import(api, shared, "a"), queued_import(api, shared, "b")
    r = api.post(f"/api/models/imports/{first}/cancel")
    assert r.status_code == 200 and (r.json()["status"], r.json()["message"]) == (
        "cancelled", "cancelled before it started")
    assert api.post(f"/api/models/imports/{first}/cancel").json()["status"] == "cancelled"
    with session_scope() as s:
        claimed = model_imports.claim(s, "w-test")
        assert claimed is not None and (claimed.id, claimed.status) == (second, JobStatus.starting)
    assert api.get(f"/api/models/imports/{second}").json()["status"] == "running"
    assert api.post(f"/api/models/imports/{second}/cancel").json()["status"] == "cancelling"
    with session_scope() as s:
        rows = {i: s.get(ModelImport, i) for i in (first, second)}
        assert (rows[first].status, rows[first].failure_reason) == (JobStatus.cancelled, "cancelled before it started")
        assert (rows[second].status, rows[second].failure_reason) == (JobStatus.stopping, "cancel requested")
        assert rows[first].finished_at is not None and rows[second].started_at is not None
        assert model_imports.report(s, second, 0.5, "writing") is False  # the runner stops


def test_an_import_whose_worker_went_silent_is_recovered_by_the_one_sweep(shared, api):
    """The worker's sweep (the scheduler's tick) ends a lost import as every kind of run: failed
    with the record's reason (who went silent, since when), or cancelled if a cancel was asked."""
    lost, cancelled = queued_import(api, shared, "a"), queued_import(api, shared, "b")
    with session_scope() as s:
        for _ in range(2):
            model_imports.claim(s, "w-gone")
        assert model_imports.report(s, lost, 0.25, "writing shard 1 of 4") is True
        model_imports.request_cancel(s, cancelled)
        s.execute(update(ModelImport).values(heartbeat_at=now() - timedelta(hours=1)))
        s.commit()
    sched = scheduler.Scheduler("w-test", get_settings().model_copy(update={"node_name": "node-t"}))
    sched._tick(0.0)
    state = api.get(f"/api/models/imports/{lost}").json()
    assert state["status"] == "failed" and state["progress"] == 0.25, state
    assert state["error"].startswith("worker w-gone stopped sending heartbeats (last at "), state
    assert state["error"].endswith("UTC): it was killed or its node went down")
    assert api.get(f"/api/models/imports/{cancelled}").json()["status"] == "cancelled"
    with session_scope() as s:
        assert model_imports.recover_lost(s, 60) == []  # once
