"""ASGI guards in front of every route (the API's and the mounted Gradio UI's): a request body
limit counted on the bytes as they arrive, admission control, and a redacting access log.

Both guards are plain ASGI middleware: they work the same for JSON, chunked and multipart
bodies, and refuse before any route (or Gradio) has buffered anything."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: scope key: time.monotonic() when the request was admitted (deadlines are counted from it)
ARRIVED = "vlstudio.arrived"
#: routes whose body is a file upload (multipart): they get VLSTUDIO_MAX_UPLOAD_BYTES
UPLOAD_ROUTES = {("POST", "/api/datasets"), ("POST", "/gradio_api/upload")}


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes its limit; an HTTPException so that FastAPI's
    body parsing re-raises it (as 413) instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit:,} bytes")


async def send_json(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail, "errors": []}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


class BodyLimit:
    """Counts request bytes as they arrive; past ``limit_for(scope)`` the request gets a 413."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await send_json(send, 413, f"request body of {declared:,} bytes exceeds the limit of {limit:,}",
                            {"connection": "close"})
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge as e:  # raised where no route turned it into a response (a mounted app)
            if started:
                raise
            await send_json(send, 413, e.detail, {"connection": "close"})


def is_event_stream(path: str) -> bool:
    return path.startswith("/api/") and path.endswith("/events")


class Admission:
    """At most ``max_requests`` API requests (and ``max_streams`` SSE streams) at once; the next
    ones get 503 with ``Retry-After`` at once rather than waiting for a thread or a database
    connection. Only the API's own paths are counted (the Gradio UI queues its events itself)."""

    def __init__(self, app: ASGIApp, max_requests: int, max_streams: int, retry_after_s: int = 1) -> None:
        self.app = app
        self.limits = {"request": max_requests, "stream": max_streams}
        self.active = {"request": 0, "stream": 0}
        self.retry_after = str(retry_after_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith("/api/") or path == "/metrics"):
            await self.app(scope, receive, send)
            return
        kind = "stream" if is_event_stream(path) else "request"
        if self.active[kind] >= self.limits[kind]:
            await send_json(send, 503, f"the API is at capacity ({self.limits[kind]} {kind}s at once); "
                            "retry shortly", {"retry-after": self.retry_after})
            return
        scope[ARRIVED] = time.monotonic()
        self.active[kind] += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[kind] -= 1


SECRET_QUERY = re.compile(r"((?:access_token|token|sig)=)[^&\s\"]+", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Access-log lines never carry a credential from a query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(SECRET_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                                for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = SECRET_QUERY.sub(r"\1[redacted]", record.msg)
        return True


def install_log_redaction() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
