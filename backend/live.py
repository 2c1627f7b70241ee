"""The optional live path of job streams. With a Redis broker the worker publishes "job N has
new rows" after each stored batch, and SSE streams wake at once instead of waiting for their
next database poll; without Redis (the embedded mode) they poll. The database stays the
record: a lost notification only delays an event until the next poll."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import lru_cache
from types import TracebackType
from typing import Any

from backend.settings import get_settings

log = logging.getLogger(__name__)
CHANNEL = "vlstudio:{}:{}"  # kind ("job", "evaluation"), id
_last_warning = 0.0


def redis_url() -> str | None:
    url = get_settings().broker_url
    return url if url and url.startswith(("redis://", "rediss://")) else None


@lru_cache
def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def _warn(what: str, e: Exception) -> None:
    global _last_warning
    if time.monotonic() - _last_warning > 60:  # once a minute: the stream falls back to polling
        _last_warning = time.monotonic()
        log.warning("live path: %s failed (streams fall back to polling): %s", what, e)


def publish(run_id: int, kind: str = "job") -> None:
    url = redis_url()
    if url is None:
        return
    try:
        _client(url).publish(CHANNEL.format(kind, run_id), b"1")
    except Exception as e:  # noqa: BLE001 - the rows are in the database; readers poll
        _warn("publish", e)


class Listener:
    """``async with Listener(job_id) as live: await live.wait(seconds)``: returns when the run
    (a job, or with ``kind="evaluation"`` an evaluation) has news or after ``seconds``."""

    def __init__(self, run_id: int, kind: str = "job") -> None:
        self.channel = CHANNEL.format(kind, run_id)
        self.pubsub: Any = None
        self.client: Any = None

    @property
    def active(self) -> bool:
        return self.pubsub is not None

    async def __aenter__(self) -> Listener:
        url = redis_url()
        if url is not None:
            try:
                import redis.asyncio as aioredis

                self.client = aioredis.Redis.from_url(url, socket_connect_timeout=2)
                self.pubsub = self.client.pubsub()
                await self.pubsub.subscribe(self.channel)
            except Exception as e:  # noqa: BLE001
                _warn("subscribe", e)
                await self._close()
        return self

    async def wait(self, seconds: float) -> None:
        if self.pubsub is None:
            await asyncio.sleep(seconds)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            while (left := deadline - loop.time()) > 0:
                # None also stands for the subscription's confirmation: keep waiting then.
                if await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=left) is not None:
                    while await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0):
                        pass  # drain: one database read serves every batch announced so far
                    return
        except Exception as e:  # noqa: BLE001
            _warn("listen", e)
            await self._close()
            await asyncio.sleep(seconds)

    async def _close(self) -> None:
        pubsub, client, self.pubsub, self.client = self.pubsub, self.client, None, None
        try:
            if pubsub is not None:
                await pubsub.aclose()
            if client is not None:
                await client.aclose()
        except Exception as e:  # noqa: BLE001
            _warn("close", e)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._close()
