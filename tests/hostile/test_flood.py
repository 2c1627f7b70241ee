"""A bounded flood of concurrent requests against a real API process on PostgreSQL (loopback
only): nothing answers 500, a saturated API says 503 with Retry-After instead of piling up,
and health answers again right after."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import start_studio, stop_studio

FLOOD = 300  # concurrent requests, sent at once
DEADLINE_S = 120  # the whole flood must be answered within this


def _studio(tmp_path, pg_database, redis_broker, **env: str):  # noqa: ANN202
    return start_studio(tmp_path, database_url=pg_database, broker_url=redis_broker, workers=0, extra_env=env)


@pytest.fixture
def pg_api(tmp_path, pg_database, redis_broker):
    studio = _studio(tmp_path, pg_database, redis_broker)
    yield studio
    stop_studio(studio)


@pytest.fixture
def pg_api_small_pool(tmp_path, pg_database, redis_broker):
    """4 threads (so 12 pooled connections) and no admission limit to speak of."""
    studio = _studio(tmp_path, pg_database, redis_broker, VLSTUDIO_API_THREADS="4",
                     VLSTUDIO_MAX_INFLIGHT_REQUESTS="1000", VLSTUDIO_DB_POOL_TIMEOUT_SECONDS="5")
    yield studio
    stop_studio(studio)


async def _flood(url: str, headers: dict[str, str]) -> list[httpx.Response | Exception]:
    limits = httpx.Limits(max_connections=FLOOD, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE_S, limits=limits) as c:
        def one(i: int):  # noqa: ANN202
            kind = i % 5
            if kind == 0:
                return c.get("/api/health")
            if kind == 1:
                return c.get("/metrics")
            if kind == 2:
                return c.get("/api/jobs", headers=headers)
            if kind == 3:
                return c.post("/api/jobs", headers=headers, json={"dataset_id": 999, "model_id": 1})
            return c.get("/api/jobs/1/events", headers=headers)  # 404: no such job
        return await asyncio.gather(*(one(i) for i in range(FLOOD)), return_exceptions=True)


def test_concurrent_flood_gets_no_500_and_health_stays_up(pg_api):
    t0 = time.monotonic()
    results = asyncio.run(_flood(pg_api.url, pg_api.headers))
    elapsed = time.monotonic() - t0
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} requests got no answer, e.g. {errors[0]!r}"
    codes = [r.status_code for r in results]
    assert 500 not in codes, f"{codes.count(500)} of {FLOOD} answered 500"
    allowed = {200, 404, 422, 503}
    assert set(codes) <= allowed, sorted(set(codes))
    for r in results:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
    served = [c for c in codes if c != 503]
    # At least half an admission window was served (VLSTUDIO_MAX_INFLIGHT_REQUESTS, default 128),
    # each with its real answer: 200, or 404/422 for the bogus job and submission.
    assert len(served) >= 64, Counter(codes)
    assert elapsed < DEADLINE_S
    r = httpx.get(pg_api.url + "/api/health", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    # Nothing was created by the refused submissions.
    assert httpx.get(pg_api.url + "/api/jobs", headers=pg_api.headers, timeout=10).json() == []


def test_a_connection_is_held_only_while_a_thread_runs_the_query(pg_api_small_pool):
    """300 requests in flight at once against 12 pooled connections: as each endpoint gives its
    connection back when it returns (not after its response waited for a thread), the pool
    never runs dry, so not even a 503."""
    results = asyncio.run(_flood(pg_api_small_pool.url, pg_api_small_pool.headers))
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} requests got no answer, e.g. {errors[0]!r}"
    codes = Counter(r.status_code for r in results)
    assert set(codes) <= {200, 404, 422}, codes
