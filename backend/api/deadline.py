"""The request deadline of handlers whose work grows with their input (issue 26): past
``VLSTUDIO_REQUEST_DEADLINE_SECONDS`` since the request arrived, or once its client has gone
away, the work stops at its next :func:`backend.core.deadline.check` and the answer is 503."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import anyio.from_thread
from fastapi import Depends, Request

from backend.api.guards import ARRIVED
from backend.core import deadline
from backend.services.errors import Abandoned
from backend.settings import get_settings

#: how often the client's connection is looked at (a hop to the event loop each time)
DISCONNECT_POLL_S = 0.25


class RequestDeadline:
    def __init__(self, request: Request) -> None:
        self.request = request
        self.seconds = get_settings().request_deadline_seconds
        self.until = request.scope.get(ARRIVED, time.monotonic()) + self.seconds
        self._next_poll = 0.0

    def stop_if_abandoned(self) -> None:
        now = time.monotonic()
        if now > self.until:
            raise Abandoned(f"the request was stopped at its {self.seconds:g} s deadline "
                            "(VLSTUDIO_REQUEST_DEADLINE_SECONDS): ask for less")
        if now >= self._next_poll:
            self._next_poll = now + DISCONNECT_POLL_S
            if anyio.from_thread.run(self.request.is_disconnected):
                raise Abandoned("the client went away; the work was stopped")

    @contextmanager
    def bound(self) -> Iterator[None]:
        """Run the handler's work under this deadline (in the handler's worker thread)."""
        with deadline.bound(self.stop_if_abandoned):
            yield


Deadline = Annotated[RequestDeadline, Depends(RequestDeadline)]
