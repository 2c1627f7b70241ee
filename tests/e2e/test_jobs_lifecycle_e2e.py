"""Cancel, checkpoint, resume, SSE resume after a reconnect, and (production) an API restart
mid-run, through the REST API with real workers running torchrun + DeepSpeed: embedded
(SQLite + filesystem broker) and production (PostgreSQL + Redis)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import restart_api
from tests.e2e.jobs_helpers import metric_steps, read_sse, submit, upload_demo, wait_until
from worker import processes

pytestmark = pytest.mark.slow
STEPS = 14


def cancel_then_resume(studio, tmp_path: Path, restart_api_midway: bool = False) -> None:
    steps = STEPS * 3 if restart_api_midway else STEPS  # room for a slow restart before the cancel
    ds = upload_demo(studio, tmp_path)
    job = submit(studio, ds, max_steps=steps)
    running = wait_until(studio, job["id"], lambda j: j["step"] >= 2, "step 2")
    if restart_api_midway:  # the API holds no job state: the run goes on, the new API sees it
        restart_api(studio)
        after = wait_until(studio, job["id"], lambda j: j["step"] > running["step"], "progress after the restart")
        assert after["status"] == "running" and after["worker"] == running["worker"]
    with studio.api as api:
        assert api.post(f"/jobs/{job['id']}/cancel").json()["status"] in ("stopping", "cancelled")
    done = studio.wait_job(job["id"], timeout=300)
    assert done["status"] == "cancelled", done
    ckpt = Path(done["last_checkpoint"])
    assert ckpt.parent == Path(done["run_dir"]) / "checkpoints" and (ckpt / "trainer_state.json").exists()
    saved_at = int(ckpt.name.split("-")[1])
    assert 2 <= saved_at < steps and f"last checkpoint {ckpt.name}" in done["failure_reason"]
    # Every trainer got the SIGTERM (not torchrun's agent): they saved, exited 0, the agent ended
    # cleanly, and the log ends with the verdict, without a torchrun traceback.
    with studio.api as api:
        log = [r["line"] for r in api.get(f"/jobs/{job['id']}/logs", params={"limit": 10000}).json()]
    assert sum("stopped on request; checkpoint saved" in x for x in log) == 1, log[-30:]
    assert not [x for x in log if "Traceback" in x or "ChildFailedError" in x], log[-40:]
    assert log[-1] == f"job cancelled: by the user; last checkpoint {ckpt.name}" and done["exit_code"] == 0
    assert processes.spec_processes(Path(done["run_dir"]) / "spec.json") == [], "a trainer survived the cancel"
    for name in ("spec.json", "meta.json", "ds_config.json", "command.txt"):
        assert name in done["run_files"], name
    assert done["command"].endswith(f"--spec {done['run_dir']}/spec.json")

    # SSE: read part of the stream, drop the connection, resume from the last event id
    url, headers = f"{studio.url}/api/jobs/{job['id']}/events", studio.headers
    first, last_id = read_sse(url, headers, max_events=5)
    rest, _ = read_sse(url, headers, last_event_id=last_id)
    seqs = [d["seq"] for k, d in first + rest if k == "log"]
    with studio.api as api:
        stored = [row["seq"] for row in api.get(f"/jobs/{job['id']}/logs", params={"limit": 10000}).json()]
    assert seqs == stored == list(range(1, len(stored) + 1)), "the resumed stream has gaps or repeats"
    assert rest[-1][0] == "end" and rest[-1][1]["status"] == "cancelled"

    with studio.api as api:
        r = api.post(f"/jobs/{job['id']}/resume")
    assert r.status_code == 201, r.text
    child = r.json()
    assert child["parent_job_id"] == job["id"] and child["resume_from_checkpoint"] == str(ckpt)
    final = studio.wait_job(child["id"], timeout=400)
    assert final["status"] == "succeeded", (final, studio.worker_log())
    continued = metric_steps(studio, child["id"])
    assert continued == list(range(saved_at + 1, steps + 1)), f"did not continue from step {saved_at}: {continued}"


def test_cancel_saves_a_checkpoint_and_resume_continues_embedded(embedded_studio, tmp_path):
    cancel_then_resume(embedded_studio, tmp_path)


@pytest.mark.production
def test_cancel_saves_a_checkpoint_and_resume_continues_production(production_studio, tmp_path):
    cancel_then_resume(production_studio, tmp_path, restart_api_midway=True)
