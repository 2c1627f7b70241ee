"""POST /api/models/import: a released-style checkpoint on the server is converted and
registered; anything outside VLSTUDIO_DATA_ROOTS or broken is refused, nothing left behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))
from convert_helpers import write_original  # noqa: E402


@pytest.fixture(autouse=True)
def import_runner(shared, api):
    """A worker's import runner, in this process (a worker runs it beside its scheduler)."""
    from worker.model_imports import ImportRunner

    runner = ImportRunner("test-worker")
    runner.start()
    yield runner
    runner.stop()


def test_import_converts_and_registers(shared, api, tmp_path):
    write_original(shared / "Mini-InternVL-Chat-4B-V1-5", "phi3")
    r = api.post("/api/models/import", json={"path": str(shared / "Mini-InternVL-Chat-4B-V1-5")})
    assert r.status_code == 201, r.text
    m = r.json()
    assert (m["name"], m["family"], m["template"]) == ("Mini-InternVL-Chat-4B-V1-5", "phi3", "phi3-chat")
    assert m["info"]["param_count"] > 0 and m["info"]["source_format"] == "original"
    assert m["id"] in [x["id"] for x in api.get("/api/models").json()]
    assert (tmp_path / "data" / "models" / m["name"] / "config.json").exists()
    again = api.post("/api/models/import", json={"path": str(shared / "Mini-InternVL-Chat-4B-V1-5")})
    assert again.status_code == 409


def test_import_refuses_outside_roots_and_broken_checkpoints(shared, api, tmp_path):
    outside = tmp_path / "elsewhere"
    write_original(outside, "qwen2")
    r = api.post("/api/models/import", json={"path": str(outside)})
    assert r.status_code == 403 and "not under an allowed data folder" in r.json()["detail"]

    write_original(shared / "v1", "qwen2")
    cfg = json.loads((shared / "v1" / "config.json").read_text())
    cfg["ps_version"] = "v1"
    (shared / "v1" / "config.json").write_text(json.dumps(cfg))
    r = api.post("/api/models/import", json={"path": str(shared / "v1")})
    assert r.status_code == 422 and "ps_version" in r.json()["detail"]
    assert [m["name"] for m in api.get("/api/models").json()] == ["internvl-tiny-demo"]
    assert not (tmp_path / "data" / "models" / "v1").exists()


def test_an_import_is_a_background_job_with_progress_and_cancel(shared, api, tmp_path, import_runner):
    """wait=false answers at once; the worker reports progress; a cancel mid-conversion stops it
    and leaves no folder and no model; the API process never imported the converter."""
    import time

    from worker.convert import import_checkpoint

    write_original(shared / "a", "phi3")
    write_original(shared / "b", "phi3")
    seen: list[float] = []

    def slow_convert(src, dst, progress):  # noqa: ANN001, ANN202 - a slow disk: every step takes 0.3 s
        def report(done: int, total: int, message: str) -> None:
            time.sleep(0.3)
            seen.append(done / total)
            progress(done, total, message)
        return import_checkpoint(src, dst, report)

    import_runner.convert = slow_convert
    r = api.post("/api/models/import", json={"path": str(shared / "a"), "wait": False})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and job["name"] == "a"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (state := api.get(f"/api/models/imports/{job['id']}").json())[
            "status"] != "done":
        time.sleep(0.2)
    assert state["status"] == "done" and state["progress"] == 1.0 and state["model_id"], state
    assert len(seen) >= 2 and seen == sorted(seen)

    r = api.post("/api/models/import", json={"path": str(shared / "b"), "wait": False})
    job = r.json()
    while not seen or api.get(f"/api/models/imports/{job['id']}").json()["status"] != "running":
        time.sleep(0.05)
    before = len(seen)
    while len(seen) == before:
        time.sleep(0.05)  # it is converting now
    assert api.post(f"/api/models/imports/{job['id']}/cancel").json()["status"] == "cancelling"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (state := api.get(f"/api/models/imports/{job['id']}").json())[
            "status"] == "cancelling":
        time.sleep(0.2)
    assert state["status"] == "cancelled", state
    assert "b" not in [m["name"] for m in api.get("/api/models").json()]
    assert not (tmp_path / "data" / "models" / "b").exists()
    assert not [p for p in (tmp_path / "data" / "models").iterdir() if p.name.startswith((".b", "b"))]
