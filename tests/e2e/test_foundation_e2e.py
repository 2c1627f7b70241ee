"""The whole path as a user takes it, through the REST API with a real Celery worker running
torchrun + DeepSpeed: once embedded (SQLite + filesystem broker), once in production mode
(PostgreSQL + Redis)."""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from backend.core.demo_data import write_zip

pytestmark = pytest.mark.slow

STEPS = 6


def collect_sse(url: str, events: list, stop: threading.Event, headers: dict | None = None) -> None:
    """Read the SSE stream, recording (receipt time, event, data)."""
    with httpx.stream("GET", url, timeout=httpx.Timeout(600, connect=10), headers=headers) as r:
        kind = None
        for line in r.iter_lines():
            if stop.is_set():
                return
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                events.append((time.time(), kind, json.loads(line[6:])))
                if kind == "end":
                    return


def run_user_path(studio, tmp_path: Path) -> None:
    api = studio.api
    models = api.get("/models").json()
    demo = next(m for m in models if m["builtin"])

    zpath = write_zip(tmp_path / "shapes.zip", n=24)
    with open(zpath, "rb") as f:
        r = api.post("/datasets", files={"file": ("shapes.zip", f, "application/zip")})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["num_samples"] == 24 and ds["num_images"] == 24
    assert api.get(f"/datasets/{ds['id']}").json()["name"] == "shapes"

    r = api.post("/jobs", json={"dataset_id": ds["id"], "model_id": demo["id"], "preset": "demo",
                                "hyperparameters": {"max_steps": STEPS, "nproc_per_node": 2, "zero_stage": 2,
                                                    "per_device_batch_size": 2, "learning_rate": 1e-3}})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued"

    events: list = []
    stop = threading.Event()
    t = threading.Thread(target=collect_sse, args=(f"{studio.url}/api/jobs/{job['id']}/events", events, stop, studio.headers),
                         daemon=True)
    t.start()
    final = studio.wait_job(job["id"])
    t.join(timeout=30)
    stop.set()
    assert final["status"] == "succeeded", (final, studio.worker_log())

    statuses = [d["status"] for _, k, d in events if k == "status"]
    assert statuses[0] in ("queued", "starting", "running") and statuses[-1] == "succeeded"
    assert "running" in statuses

    logs = api.get(f"/jobs/{job['id']}/logs", params={"after": 0, "limit": 10000}).json()
    text = [row["line"] for row in logs]
    assert [row["seq"] for row in logs] == list(range(1, len(logs) + 1))
    for step in range(1, STEPS + 1):
        assert sum(line.startswith(f"step {step}/{STEPS} | loss ") for line in text) == 1, f"step {step}: not one line"
    assert not any(line.startswith("{'loss'") for line in text), "a raw Trainer dict beside the step line"
    cursor = logs[len(logs) // 2]["seq"]
    after = api.get(f"/jobs/{job['id']}/logs", params={"after": cursor}).json()
    assert after[0]["seq"] == cursor + 1

    metrics = api.get(f"/jobs/{job['id']}/metrics").json()
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert all(m["loss"] is not None and math.isfinite(m["loss"]) for m in metrics)
    assert all(math.isfinite(m["values"]["grad_norm"]) and m["values"]["learning_rate"] >= 0 for m in metrics)

    # Live: metric points arrived over SSE before the job finished, not all at the end.
    finished = datetime.fromisoformat(final["finished_at"].replace("Z", "+00:00")).timestamp()
    metric_times = [ts for ts, k, _ in events if k == "metric"]
    assert len(metric_times) == STEPS
    assert metric_times[0] < finished - 0.5, "metric points were not streamed while the job ran"

    run_dir = Path(final["run_dir"])
    for name in ("spec.json", "meta.json", "command.txt", "training_log.txt", "metrics.jsonl"):
        assert (run_dir / name).exists(), name
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    model = InternVLForConditionalGeneration.from_pretrained(run_dir / "final")
    tok = AutoTokenizer.from_pretrained(run_dir / "final")
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>")


def test_embedded_mode_end_to_end(embedded_studio, tmp_path):
    health = embedded_studio.api.get("/health").json()
    assert health == {"status": "ok", "database": "sqlite", "broker": "filesystem"}
    run_user_path(embedded_studio, tmp_path)


@pytest.mark.production
def test_production_mode_end_to_end(production_studio, tmp_path):
    health = production_studio.api.get("/health").json()
    assert health["database"] == "postgresql" and health["broker"] == "redis"
    run_user_path(production_studio, tmp_path)
