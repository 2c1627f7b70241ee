"""The live path of job streams: a Redis notification wakes a waiting stream at once; without
Redis (embedded) the wait is a plain poll interval."""

from __future__ import annotations

import asyncio
import time

from backend import live
from backend.settings import get_settings


def waited(job_id: int, notify: bool, seconds: float = 3.0) -> tuple[bool, float]:
    async def run() -> tuple[bool, float]:
        async with live.Listener(job_id) as listener:
            if notify:
                asyncio.get_running_loop().call_later(0.2, live.publish, job_id)
            t = time.monotonic()
            await listener.wait(seconds)
            return listener.active, time.monotonic() - t

    return asyncio.run(run())


def test_notification_wakes_the_stream_with_redis(redis_broker, monkeypatch):
    monkeypatch.setenv("VLSTUDIO_BROKER_URL", redis_broker)
    get_settings.cache_clear()
    try:
        active, took = waited(7, notify=True)
        assert active and took < 1.5
        active, took = waited(8, notify=False, seconds=0.5)  # no news: the safety-net timeout
        assert active and took >= 0.45
    finally:
        get_settings.cache_clear()


def test_without_redis_the_stream_polls(monkeypatch):
    monkeypatch.delenv("VLSTUDIO_BROKER_URL", raising=False)
    get_settings.cache_clear()
    try:
        active, took = waited(7, notify=True, seconds=0.5)
        assert not active and took >= 0.45
    finally:
        get_settings.cache_clear()
