"""Playground chats as work for the workers' model servers (issue 13): the API records a
``chat_requests`` row and streams the reply's pieces back from ``chat_tokens`` rows, the same
database + live-notification path as a job's log (``backend.live``, kind ``chat``). The API
loads no model and imports no torch; the table is the queue. A chat is a kind of run of the one
lifecycle (:data:`backend.services.runs.CHAT`): claimed, cancelled (its client went away),
ended and recovered by the same compare-and-set code as jobs, evaluations and model imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend.core.clock import now
from backend.db.models import ChatRequest, ChatToken, JobStatus
from backend.services import runs
from backend.services.errors import Conflict

S, KIND = JobStatus, runs.CHAT
FINISHED = tuple(s.value for s in S if s.finished)  # as_dict's words for an ended chat


def submit(session: Session, *, owner_id: int | None, model_path: str, builtin: bool, template: str,
           tiling: dict | None, conversation: list[dict], image: str | None, max_new_tokens: int,
           temperature: float) -> ChatRequest:
    chat = ChatRequest(owner_id=owner_id, status=S.queued, model_path=model_path, builtin=builtin,
                       template=template, tiling=tiling,
                       conversation=conversation, image=image, max_new_tokens=max_new_tokens,
                       temperature=temperature)
    session.add(chat)
    session.commit()
    return chat


def claim(session: Session, worker: str, limit: int) -> list[ChatRequest]:
    """Up to ``limit`` queued chats for ``worker``'s model server, oldest first."""
    ids = list(session.scalars(select(ChatRequest.id).where(ChatRequest.status == S.queued)
                               .order_by(ChatRequest.id).limit(limit)))
    return [session.get(ChatRequest, chat_id) for chat_id in ids if runs.claim(session, KIND, chat_id, worker)]


def append(session: Session, pieces: dict[int, tuple[int, list[str]]]) -> None:
    """Store new pieces of several chats in one transaction: chat id -> (first seq, texts)."""
    for chat_id, (first, texts) in pieces.items():
        session.add_all(ChatToken(chat_id=chat_id, seq=first + i, text=t) for i, t in enumerate(texts))
        runs.mark_running(session, KIND, chat_id)
    if pieces:
        session.execute(update(ChatRequest).where(ChatRequest.id.in_(list(pieces))).values(heartbeat_at=now()))
    session.commit()


def finish(session: Session, chat_id: int, status: JobStatus, reply: str | None = None, error: str | None = None,
           batch_size: int | None = None) -> bool:
    """The model server's verdict on one chat; one whose client went away meanwhile (stopping)
    ends cancelled, as a run cancelled while its program finished. False if it had ended."""
    chat = state(session, chat_id)
    if chat is None or chat.status.finished:
        return False
    runs.mark_running(session, KIND, chat_id)  # ended before its first piece: it ran all the same
    session.commit()
    session.refresh(chat)
    target = S.cancelled if chat.status == S.stopping else status
    fields: dict[str, Any] = {"reply": reply, "batch_size": batch_size}
    if target == S.failed:
        fields["failure_reason"] = error
    try:
        return runs.transition(session, KIND, chat_id, target, **fields)
    except Conflict:
        return False  # ended by another between the check and the transition


def cancel(session: Session, chat_id: int) -> None:
    """The client went away: the one request_cancel (queued: cancelled; generating: stopping, and
    the server stops spending tokens on it). Nothing to do once it has ended."""
    chat = state(session, chat_id)
    if chat is not None and not chat.status.finished:
        runs.request_cancel(session, KIND, chat)


def state(session: Session, chat_id: int) -> ChatRequest | None:
    chat = session.get(ChatRequest, chat_id)
    if chat is not None:
        session.refresh(chat)
    return chat


def stopped(session: Session, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` the server should stop generating: cancelled by their client, or ended."""
    rows = session.execute(select(ChatRequest.id, ChatRequest.status).where(ChatRequest.id.in_(list(ids)))).all()
    return {i for i, status in rows if status == S.stopping or status.finished}


def tokens_after(session: Session, chat_id: int, after: int) -> list[tuple[int, str]]:
    rows = session.execute(select(ChatToken.seq, ChatToken.text).where(ChatToken.chat_id == chat_id,
                                                                          ChatToken.seq > after)
                           .order_by(ChatToken.seq)).all()
    return [(int(a), b) for a, b in rows]


def recover_lost(session: Session, timeout_s: float) -> list[int]:
    """Chats whose model server went silent (its worker died mid-reply): the one sweep of every
    kind of run."""
    return runs.recover_lost(session, KIND, timeout_s)


def count_queued(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ChatRequest).where(ChatRequest.status == S.queued)) or 0


def as_dict(chat: ChatRequest) -> dict[str, Any]:
    return {"id": chat.id, "status": chat.status.value, "reply": chat.reply,
            "error": chat.failure_reason if chat.status == S.failed else None, "batch_size": chat.batch_size}
