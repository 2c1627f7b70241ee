"""Playground chats as work for the workers' model servers (issue 13): the API records a
``chat_requests`` row and streams the reply's pieces back from ``chat_tokens`` rows, the same
database + live-notification path as a job's log (``backend.live``, kind ``chat``). The API
loads no model and imports no torch; the table is the queue, claimed with compare-and-set.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend.core.clock import now
from backend.db.models import ChatRequest, ChatToken

FINISHED = ("done", "failed", "cancelled")


def submit(session: Session, *, owner_id: int | None, model_path: str, builtin: bool, template: str,
           tiling: dict | None, conversation: list[dict], image: str | None, max_new_tokens: int,
           temperature: float) -> ChatRequest:
    chat = ChatRequest(owner_id=owner_id, status="queued", model_path=model_path, builtin=builtin,
                       template=template, tiling=tiling,
                       conversation=conversation, image=image, max_new_tokens=max_new_tokens,
                       temperature=temperature)
    session.add(chat)
    session.commit()
    return chat


def claim(session: Session, worker: str, limit: int) -> list[ChatRequest]:
    """Up to ``limit`` queued chats for ``worker``'s model server, oldest first."""
    ids = list(session.scalars(select(ChatRequest.id).where(ChatRequest.status == "queued")
                               .order_by(ChatRequest.id).limit(limit)))
    got = []
    for chat_id in ids:
        res = session.execute(update(ChatRequest).where(ChatRequest.id == chat_id, ChatRequest.status == "queued")
                              .values(status="running", worker=worker, heartbeat_at=now()))
        session.commit()
        if res.rowcount == 1:
            got.append(session.get(ChatRequest, chat_id))
    return got


def append(session: Session, pieces: dict[int, tuple[int, list[str]]]) -> None:
    """Store new pieces of several chats in one transaction: chat id -> (first seq, texts)."""
    for chat_id, (first, texts) in pieces.items():
        session.add_all(ChatToken(chat_id=chat_id, seq=first + i, text=t) for i, t in enumerate(texts))
    if pieces:
        session.execute(update(ChatRequest).where(ChatRequest.id.in_(list(pieces))).values(heartbeat_at=now()))
    session.commit()


def finish(session: Session, chat_id: int, status: str, reply: str | None = None, error: str | None = None,
           batch_size: int | None = None) -> None:
    session.execute(update(ChatRequest).where(ChatRequest.id == chat_id, ChatRequest.status.not_in(FINISHED))
                    .values(status=status, reply=reply, error=error, batch_size=batch_size, finished_at=now()))
    session.commit()


def cancel(session: Session, chat_id: int) -> None:
    """The client went away: the server stops spending tokens on it."""
    finish(session, chat_id, "cancelled")


def state(session: Session, chat_id: int) -> ChatRequest | None:
    chat = session.get(ChatRequest, chat_id)
    if chat is not None:
        session.refresh(chat)
    return chat


def statuses(session: Session, ids: Sequence[int]) -> dict[int, str]:
    return dict(session.execute(select(ChatRequest.id, ChatRequest.status).where(ChatRequest.id.in_(list(ids)))).all())


def tokens_after(session: Session, chat_id: int, after: int) -> list[tuple[int, str]]:
    rows = session.execute(select(ChatToken.seq, ChatToken.text).where(ChatToken.chat_id == chat_id,
                                                                          ChatToken.seq > after)
                           .order_by(ChatToken.seq)).all()
    return [(int(a), b) for a, b in rows]


def recover_stale(session: Session, timeout_s: float) -> list[int]:
    """Fail chats whose model server went silent (its worker died mid-reply)."""
    cutoff = now() - timedelta(seconds=timeout_s)
    ids = list(session.scalars(select(ChatRequest.id).where(ChatRequest.status == "running",
                                                           ChatRequest.heartbeat_at < cutoff)))
    for chat_id in ids:
        finish(session, chat_id, "failed", error="the model server stopped answering (its worker went away)")
    return ids


def count_queued(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ChatRequest).where(ChatRequest.status == "queued")) or 0


def as_dict(chat: ChatRequest) -> dict[str, Any]:
    return {"id": chat.id, "status": chat.status, "reply": chat.reply, "error": chat.error,
            "batch_size": chat.batch_size}
