"""The UI's reader of a run's server-sent events (``GET /api/jobs/{id}/events``).

A page that follows a run holds one :class:`EventFeed`: a task reads the API's stream into a
queue and reconnects with ``Last-Event-ID`` (the cursor of the last event it got) when the
connection drops, so nothing is missed or repeated; ``end`` closes it for good. The page asks for
what has arrived with :meth:`EventFeed.batch`, which waits for the first event up to a timeout and
then takes every event already queued, so one render serves a burst of lines.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import TracebackType

import httpx

RECONNECT_S = 1.0  # the API's own `retry:` hint


@dataclass(frozen=True)
class Event:
    name: str  # log | metric | status | end
    id: str  # the cursor after this event
    data: dict


def parse(lines: list[str]) -> Event | None:
    """One SSE event from its lines (``event:``, ``id:``, ``data:``); None for a comment or a
    bare ``retry:``."""
    name, eid, data = "message", "", []
    for line in lines:
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "event":
            name = value
        elif key == "id":
            eid = value
        elif key == "data":
            data.append(value)
    if not data:
        return None
    return Event(name, eid, json.loads("\n".join(data)))


class EventFeed:
    """``async with EventFeed(url, headers, cursor) as feed: events = await feed.batch(1.0)``."""

    def __init__(self, url: str, headers: dict[str, str], cursor: str) -> None:
        self.url, self.headers, self.cursor = url, headers, cursor
        self.queue: asyncio.Queue[Event | Exception] = asyncio.Queue()
        self.ended = False
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> EventFeed:
        self.task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def _read(self) -> None:
        timeout = httpx.Timeout(10.0, read=None)  # a quiet run sends nothing for minutes
        async with httpx.AsyncClient(timeout=timeout, headers=self.headers) as http:
            while True:
                try:
                    async with http.stream("GET", self.url, headers={"Last-Event-ID": self.cursor}) as r:
                        if 400 <= r.status_code < 500 and r.status_code != 429:
                            await r.aread()
                            # a refusal (gone, not allowed) ends the feed; the page shows why
                            self.queue.put_nowait(RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}"))
                            return
                        if r.status_code < 400:  # else busy (503, 429): try again
                            lines: list[str] = []
                            async for line in r.aiter_lines():
                                if line:
                                    lines.append(line)
                                    continue
                                event, lines = parse(lines), []
                                if event is None:
                                    continue
                                if event.id:
                                    self.cursor = event.id
                                self.queue.put_nowait(event)
                                if event.name == "end":
                                    return
                except httpx.HTTPError:
                    pass  # the API restarted or the connection dropped: go on from the cursor
                await asyncio.sleep(RECONNECT_S)

    async def batch(self, timeout: float) -> list[Event]:
        """The events that arrived, waiting up to ``timeout`` s for the first; [] if none.
        Raises the stream's refusal (RuntimeError)."""
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return []
        out = [first]
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        for e in out:
            if isinstance(e, Exception):
                raise e
        if any(e.name == "end" for e in out):
            self.ended = True
        return out  # type: ignore[return-value]
