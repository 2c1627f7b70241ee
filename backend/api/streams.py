"""The one server-sent-event stream of a run (training job or evaluation).

A run's :class:`Feed` reads its state and its rows after per-kind cursors from the database
(``log`` and ``metric`` for a job, ``log`` for an evaluation); the stream sends every row as an
event whose id is the cursor ``A:B`` (one number per kind), a ``status`` event when the state
changes and ``end`` once the run is finished and nothing is left. A client that reconnects
with ``Last-Event-ID`` or ``?cursor=`` continues with no gap and no repeat. What wakes the
stream is the live path (:mod:`backend.live`: Redis pub/sub, else database polling).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from backend import live

FINISHED = ("succeeded", "failed", "cancelled")
Poll = Callable[[list[int]], tuple[dict, list[list[dict]]]]  # cursors -> (state, rows per kind)


@dataclass(frozen=True)
class Feed:
    kind: str  # the live channel's kind: "job" | "evaluation"
    run_id: int
    events: tuple[str, ...]  # event name per row kind, e.g. ("log", "metric")
    poll: Poll


def parse_cursor(value: str | None, n: int) -> list[int]:
    """``"12:3"`` -> [12, 3]; anything malformed starts from the beginning."""
    try:
        parts = [int(x) for x in (value or "").split(":")]
    except ValueError:
        return [0] * n
    return parts if len(parts) == n else [0] * n


def _event(cursors: list[int], name: str, data: dict) -> str:
    return f"id: {':'.join(map(str, cursors))}\nevent: {name}\ndata: {json.dumps(data)}\n\n"


async def events(feed: Feed, request: Request, listener: live.Listener, poll_seconds: float,
                 cursors: list[int]) -> AsyncIterator[str]:
    """The event stream from ``cursors`` on; waits on ``listener`` (or polls) when idle."""
    last_state: dict | None = None
    yield "retry: 1000\n\n"
    while True:
        if await request.is_disconnected():
            return
        state, rows = await run_in_threadpool(feed.poll, list(cursors))
        for i, (name, batch) in enumerate(zip(feed.events, rows, strict=True)):
            for row in batch:
                cursors[i] = row["seq"]
                yield _event(cursors, name, row)
        fresh = any(rows)
        if state != last_state:
            last_state = state
            yield _event(cursors, "status", state)
        if state["status"] in FINISHED and not fresh:
            yield _event(cursors, "end", state)
            return
        if not fresh:
            await listener.wait(poll_seconds)


def stream_response(feed: Feed, request: Request, poll_seconds: float, cursor: str | None) -> StreamingResponse:
    cursors = parse_cursor(cursor, len(feed.events))

    async def stream() -> AsyncIterator[str]:
        async with live.Listener(feed.run_id, feed.kind) as listener:
            # With Redis, notifications wake the stream and the database poll is a safety net.
            poll = 1.0 if listener.active else poll_seconds
            async for event in events(feed, request, listener, poll, cursors):
                yield event

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
