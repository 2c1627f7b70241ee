"""Helpers shared by the job-service end-to-end tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from backend.core.demo_data import write_zip

FAST = {"nproc_per_node": 2, "zero_stage": 2, "per_device_batch_size": 2, "learning_rate": 1e-3,
        "logging_steps": 1}


def upload_demo(studio, tmp_path: Path, n: int = 24) -> int:
    zpath = write_zip(tmp_path / "shapes.zip", n=n)
    with open(zpath, "rb") as f, studio.api as api:
        r = api.post("/datasets", files={"file": ("shapes.zip", f, "application/zip")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def submit(studio, ds: int, requeue: bool = False, **hyper) -> dict:
    with studio.api as api:
        r = api.post("/jobs", json={"dataset_id": ds, "model_id": 1, "preset": "demo",
                                    "hyperparameters": {**FAST, **hyper}, "requeue_on_failure": requeue})
    assert r.status_code == 201, r.text
    return r.json()


def wait_until(studio, job_id: int, pred, what: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    with studio.api as api:
        while time.monotonic() < deadline:
            job = api.get(f"/jobs/{job_id}").json()
            if pred(job):
                return job
            time.sleep(0.5)
    raise AssertionError(f"job {job_id}: no {what} in {timeout}s: {job}\n{studio.worker_log()}")


def metric_steps(studio, job_id: int) -> list[int]:
    with studio.api as api:
        return [m["step"] for m in api.get(f"/jobs/{job_id}/metrics").json() if m["values"].get("kind") != "gpu"]


def read_sse(url: str, headers: dict, last_event_id: str | None = None, max_events: int | None = None,
             ) -> tuple[list[tuple[str, dict]], str | None]:
    """(events, last id) of an SSE stream, stopping after ``max_events`` or at ``end``."""
    h = {**headers, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    events: list[tuple[str, dict]] = []
    last_id = last_event_id
    with httpx.stream("GET", url, headers=h, timeout=httpx.Timeout(120, connect=10)) as r:
        assert r.status_code == 200, r.read()
        kind = None
        for line in r.iter_lines():
            if line.startswith("id: "):
                last_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                events.append((kind, json.loads(line[6:])))
                if kind == "end" or (max_events and len(events) >= max_events):
                    break
    return events, last_id
