"""Load on the job API: 200 job submissions at once while 50 SSE clients are connected.

Starts its own API (no worker: the jobs stay queued, so no training is needed), in the
embedded mode or against PostgreSQL + Redis, and prints p50/p99 latencies of

- submission (``POST /api/jobs``, all at once),
- a log line written to the database reaching the 50 connected SSE clients,
- cancel (``POST /api/jobs/{id}/cancel``) to the ``end`` event on the job's stream,

and checks that no submission, line or event was lost::

    python bench/api_load.py                                   # embedded (SQLite)
    python bench/api_load.py --database-url postgresql+psycopg://postgres@127.0.0.1/test \
        --broker-url redis://127.0.0.1:6379/9
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import start_studio, stop_studio  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def report(name: str, xs: list[float]) -> None:
    print(f"{name:<38} n={len(xs):<4} p50={pct(xs, 50):8.1f} ms  p99={pct(xs, 99):8.1f} ms  "
          f"max={max(xs) * 1000:8.1f} ms")


RETRIES = [0]  # submissions answered 503 (at capacity) and retried


async def submit_all(client: httpx.AsyncClient, ds: int, n: int) -> tuple[list[int], list[float]]:
    async def one(i: int) -> tuple[int, float]:
        # A well-behaved client: past the API's admission limit it gets 503 + Retry-After and
        # tries again with the same Idempotency-Key (never two jobs for one submission).
        t, key = time.perf_counter(), f"bench-{time.time_ns()}-{i}"
        while True:
            r = await client.post("/api/jobs", json={"dataset_id": ds, "model_id": 1, "preset": "demo",
                                                      "hyperparameters": {"max_steps": 1}, "priority": i % 3},
                                  headers={"Idempotency-Key": key})
            if r.status_code != 503:
                break
            RETRIES[0] += 1
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
        assert r.status_code in (200, 201), r.text
        return r.json()["id"], time.perf_counter() - t

    out = await asyncio.gather(*(one(i) for i in range(n)))
    return [j for j, _ in out], [d for _, d in out]


async def sse_client(client: httpx.AsyncClient, job_id: int, received: dict, ready: asyncio.Event) -> None:
    """Records the arrival time of every log line (by text) and of the end event."""
    async with client.stream("GET", f"/api/jobs/{job_id}/events", timeout=None) as r:
        assert r.status_code == 200
        kind = None
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
                if kind == "status":
                    ready.set()
            elif line.startswith("data: ") and kind == "log":
                received.setdefault(json.loads(line[6:])["line"], time.perf_counter())
            elif line.startswith("data: ") and kind == "end":
                received["__end__"] = time.perf_counter()
                return


def write_line(job_id: int, seq: int, text: str) -> None:
    """What a worker does with a batch: store it, then announce it on the live path."""
    from backend import live
    from backend.db.session import session_scope
    from backend.services import jobs

    with session_scope() as s:
        jobs.append_logs(s, job_id, seq, [text])
    live.publish(job_id)


async def run(args: argparse.Namespace, studio) -> int:
    limits = httpx.Limits(max_connections=args.jobs + args.clients + 20, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=studio.url, headers=studio.headers, limits=limits,
                                 timeout=httpx.Timeout(120)) as client:
        r = await client.post("/api/datasets/demo", params={"samples": 8})
        ds = r.json()["id"]
        # 50 SSE clients on the first jobs, connected before the burst of submissions
        first, _ = await submit_all(client, ds, args.clients)
        received = {j: {} for j in first}
        readies = [asyncio.Event() for _ in first]
        tasks = [asyncio.create_task(sse_client(client, j, received[j], e)) for j, e in zip(first, readies, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 60)

        t0 = time.perf_counter()
        ids, sub_lat = await submit_all(client, ds, args.jobs)
        burst = time.perf_counter() - t0
        listed = {j["id"] for j in (await client.get("/api/jobs", params={"limit": 1000})).json()}
        lost_jobs = [j for j in ids if j not in listed]

        line_lat: list[float] = []
        for k in range(args.lines):
            sent = {}
            for j in first:
                text = f"bench line {k} of job {j}"
                await asyncio.to_thread(write_line, j, k + 1, text)
                sent[j] = (text, time.perf_counter())
            await asyncio.sleep(1.0)
            for j, (text, t) in sent.items():
                if text in received[j]:
                    line_lat.append(received[j][text] - t)
        lost_lines = args.lines * len(first) - len(line_lat)

        cancel_at = {}
        for j in first:
            cancel_at[j] = time.perf_counter()
            assert (await client.post(f"/api/jobs/{j}/cancel")).json()["status"] == "cancelled"
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        end_lat = [received[j]["__end__"] - cancel_at[j] for j in first]

    print(f"mode: {args.mode}; {args.jobs} submissions in {burst:.2f} s ({args.jobs / burst:.0f}/s) "
          f"with {args.clients} SSE clients connected")
    report("submit (POST /api/jobs)", sub_lat)
    print(f"submissions retried after 503 + Retry-After: {RETRIES[0]}")
    report("log line in DB -> SSE client", line_lat)
    report("cancel -> SSE end event", end_lat)
    print(f"lost: {len(lost_jobs)} jobs, {lost_lines} log lines, "
          f"{sum(1 for j in first if '__end__' not in received[j])} end events")
    return 1 if lost_jobs or lost_lines else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--lines", type=int, default=5, help="log lines per SSE client")
    p.add_argument("--database-url")
    p.add_argument("--broker-url")
    args = p.parse_args()
    args.mode = "production (PostgreSQL + Redis)" if args.database_url else "embedded (SQLite)"
    tmp = Path(tempfile.mkdtemp(prefix="vlstudio-bench-"))
    studio = start_studio(tmp, database_url=args.database_url, broker_url=args.broker_url, workers=0)
    os.environ["VLSTUDIO_DATA_DIR"] = str(studio.data_dir)  # the bench writes log lines like a worker
    for key in ("VLSTUDIO_DATABASE_URL", "VLSTUDIO_BROKER_URL"):
        if studio.env.get(key):
            os.environ[key] = studio.env[key]
    try:
        return asyncio.run(run(args, studio))
    finally:
        stop_studio(studio)
        print(f"(data in {tmp})")


if __name__ == "__main__":
    sys.exit(main())
