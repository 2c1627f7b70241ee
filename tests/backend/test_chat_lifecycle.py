"""Playground chats are a kind of run of the one lifecycle (issue 24): claimed, cancelled (the
client went away), ended and recovered by backend/services/runs.py like jobs, evaluations and
model imports; migration 0022 maps the old words both ways on SQLite and PostgreSQL, and keeps
the chats' streamed pieces (a table copy on SQLite would have cascaded to chat_tokens)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from backend.core.clock import now
from backend.db.models import ChatRequest, JobStatus
from backend.db.session import session_scope
from backend.services import chat
from backend.settings import get_settings
from worker import scheduler

OLD_WORDS = ["queued", "running", "done", "failed", "cancelled"]
STATES = ["queued", "running", "succeeded", "failed", "cancelled"]


def test_the_migration_maps_the_chat_words_to_the_lifecycle_and_back(migration_db):
    engine, migrate = migration_db
    migrate("0021_import_lifecycle")
    at = now() - timedelta(minutes=5)
    with engine.begin() as conn:
        for i, word in enumerate(OLD_WORDS, 1):
            conn.execute(text("INSERT INTO chat_requests (id, status, model_path, builtin, template, conversation, "
                              "max_new_tokens, temperature, error, created_at, heartbeat_at) VALUES (:id, :status, "
                              "'/m', false, 't', '[]', 8, 0, :error, :at, :at)"),
                         {"id": i, "status": word, "error": "bad" if word == "failed" else None, "at": at})
            conn.execute(text("INSERT INTO chat_tokens (chat_id, seq, text) VALUES (:id, 1, 'hi')"), {"id": i})
    migrate("head")
    with Session(engine) as s:
        chats = [s.get(ChatRequest, i) for i in range(1, len(OLD_WORDS) + 1)]
        assert [c.status.value for c in chats] == STATES
        assert [c.failure_reason for c in chats] == [None, None, None, "bad", None]
        assert chat.as_dict(chats[3])["error"] == "bad" and all(c.updated_at is not None for c in chats)
        assert chat.tokens_after(s, 2, 0) == [(1, "hi")]
        s.execute(update(ChatRequest).where(ChatRequest.id == 1).values(status=JobStatus.stopping))
        s.commit()
    migrate("0021_import_lifecycle", down=True)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, error FROM chat_requests ORDER BY id")).all()
        assert conn.execute(text("SELECT count(*) FROM chat_tokens")).scalar() == len(OLD_WORDS)
    assert [r.status for r in rows] == ["cancelled", *OLD_WORDS[1:]]
    assert [r.error for r in rows] == [None, None, None, "bad", None]


def submit() -> int:
    with session_scope() as s:
        return chat.submit(s, owner_id=None, model_path="/m", builtin=False, template="t", tiling=None,
                           conversation=[], image=None, max_new_tokens=8, temperature=0.0).id


def test_a_chat_whose_client_went_away_is_cancelled_through_the_one_request_cancel(api):
    """Queued: cancelled at once. Being generated: stopping, the server stops its tokens and its
    end is recorded as the cancel (not the reply). Ended: nothing to do."""
    queued, generating, answered = submit(), submit(), submit()
    with session_scope() as s:
        chat.cancel(s, queued)
        claimed = [c.id for c in chat.claim(s, "w-test", 2)]
        assert claimed == [generating, answered]
        chat.append(s, {generating: (1, ["a"]), answered: (1, ["b"])})
        chat.cancel(s, generating)
        assert chat.stopped(s, [generating, answered]) == {generating}
        assert chat.finish(s, generating, JobStatus.succeeded, reply="a", batch_size=2)
        assert chat.finish(s, answered, JobStatus.succeeded, reply="b", batch_size=2)
        chat.cancel(s, answered)  # the client left after the end: nothing to cancel
        rows = {i: chat.state(s, i) for i in (queued, generating, answered)}
        assert (rows[queued].status, rows[queued].failure_reason) == (JobStatus.cancelled, "cancelled before it started")
        assert (rows[generating].status, rows[generating].failure_reason) == (JobStatus.cancelled, "cancel requested")
        assert (rows[answered].status, rows[answered].reply) == (JobStatus.succeeded, "b")
        assert rows[answered].started_at is not None and rows[answered].finished_at is not None


def test_a_chat_whose_server_went_silent_is_recovered_by_the_one_sweep(api):
    """The worker's sweep (the scheduler's tick) ends a lost chat as every kind of run: failed
    with the record's reason, or cancelled if its client had gone."""
    lost, gone = submit(), submit()
    with session_scope() as s:
        chat.claim(s, "w-gone", 2)
        chat.cancel(s, gone)
        s.execute(update(ChatRequest).values(heartbeat_at=now() - timedelta(hours=1)))
        s.commit()
    scheduler.Scheduler("w-test", get_settings().model_copy(update={"node_name": "node-t"}))._tick(0.0)
    with session_scope() as s:
        state = chat.as_dict(chat.state(s, lost))
        assert state["status"] == "failed"
        assert state["error"].startswith("worker w-gone stopped sending heartbeats (last at "), state
        assert chat.state(s, gone).status == JobStatus.cancelled
        assert chat.recover_lost(s, 60) == []  # once
