"""Recovery with real processes: a worker killed with -9 mid-run is detected by its missing
heartbeats and its job failed and requeued (it resumes from the last checkpoint on another
worker); a Redis restart while jobs are queued loses none; two workers never run the same job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, start_studio, start_worker, stop_studio
from tests.e2e.jobs_helpers import metric_steps, submit, upload_demo, wait_until
from worker import processes

pytestmark = pytest.mark.slow
FAST_RECOVERY = {"VLSTUDIO_HEARTBEAT_SECONDS": "1", "VLSTUDIO_HEARTBEAT_TIMEOUT_SECONDS": "8"}


def trainer_pids(run_dir: str) -> list[int]:
    """Every live process of the run (agent, trainers, DataLoader workers), from /proc; raises
    when /proc cannot be read rather than answering "none"."""
    return [p.pid for p in processes.spec_processes(Path(run_dir) / "spec.json")]


@pytest.mark.parametrize("mode", ["embedded", pytest.param("production", marks=pytest.mark.production)])
def test_kill_9_of_a_worker_fails_and_requeues_its_job(mode, tmp_path, request):
    prod = mode == "production"
    studio = start_studio(tmp_path, database_url=request.getfixturevalue("pg_database") if prod else None,
                          broker_url=request.getfixturevalue("redis_broker") if prod else None,
                          extra_env=FAST_RECOVERY)
    try:
        ds = upload_demo(studio, tmp_path)
        # Many steps after the kill point: the studio sees a step a second or two after the
        # trainer made it (0.2 s a step here), and the trainer must not reach the end meanwhile.
        kept = submit(studio, ds, requeue=True, max_steps=60, save_steps=20)
        running = wait_until(studio, kept["id"], lambda j: j["step"] >= 2, "step 2")
        os.kill(studio.procs[1].pid, signal.SIGKILL)  # the worker, mid-run, no goodbye
        failed = wait_until(studio, kept["id"], lambda j: j["status"] == "failed", "failure", timeout=60)
        assert "stopped sending heartbeats" in failed["failure_reason"]
        deadline = time.monotonic() + 30  # the orphaned trainers got SIGTERM from the dead parent
        while trainer_pids(running["run_dir"]) and time.monotonic() < deadline:
            time.sleep(1)
        assert trainer_pids(running["run_dir"]) == [], "trainers of the dead worker are still running"
        # ... and, before exiting, saved a checkpoint where they were and said so (outcome.json)
        said = json.loads((Path(running["run_dir"]) / "outcome.json").read_text())
        assert said["outcome"] == "stopped" and 2 <= said["step"] < 60, said
        # The sweep stored what the dead worker left unread in the run folder: the job's log is
        # the trainer's whole output, in order, once (no gap, no duplicate).
        with studio.api as api:
            rows = api.get(f"/jobs/{kept['id']}/logs", params={"limit": 100000}).json()
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
        written = (Path(running["run_dir"]) / "training_log.txt").read_text(errors="replace")
        stored = [r["line"] for r in rows if r["stream"] == "stdout"]
        assert stored == [x.split("\r")[-1] for x in written.splitlines()][:len(stored)]
        assert len(stored) >= len(written.splitlines()) - 1  # all but a line written after the sweep

        with studio.api as api:
            child = next(j for j in api.get("/jobs").json() if j["parent_job_id"] == kept["id"])
        assert child["status"] == "queued" and child["resume_from_checkpoint"]
        resumed_at = int(Path(child["resume_from_checkpoint"]).name.split("-")[1])
        assert resumed_at == said["step"]  # from the checkpoint saved on the dead parent's SIGTERM
        studio.procs.append(start_worker(studio.env, studio.data_dir, f"rescue-{mode}"))
        final = studio.wait_job(child["id"], timeout=400)
        assert final["status"] == "succeeded", (final, studio.worker_log())
        assert metric_steps(studio, child["id"]) == list(range(resumed_at + 1, 61))
    finally:
        stop_studio(studio)


def start_redis(port: int, tmp_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() == \
                "PONG":
            return proc
        time.sleep(0.2)
    raise RuntimeError("redis-server did not start")


@pytest.mark.production
def test_redis_restart_loses_no_queued_job_and_two_workers_never_share_one(tmp_path, pg_database):
    port = free_port()
    redis = start_redis(port, tmp_path)
    studio = start_studio(tmp_path, database_url=pg_database, broker_url=f"redis://127.0.0.1:{port}/0", workers=0)
    try:
        ds = upload_demo(studio, tmp_path, n=8)
        before = submit(studio, ds, max_steps=3)
        redis.kill()  # no persistence: every message in Redis is gone
        redis.wait()
        started = time.monotonic()
        during = submit(studio, ds, max_steps=3)  # accepted while the broker is down
        assert time.monotonic() - started < 5
        redis = start_redis(port, tmp_path)
        after = submit(studio, ds, max_steps=3)
        for i in range(2):
            studio.procs.append(start_worker(studio.env, studio.data_dir, f"w{i}-{port}"))
        ids = [before["id"], during["id"], after["id"]]
        finals = [studio.wait_job(j, timeout=600) for j in ids]
        assert [f["status"] for f in finals] == ["succeeded"] * 3, (finals, studio.worker_log())
        with studio.api as api:
            for j in ids:
                launches = [r for r in api.get(f"/jobs/{j}/logs", params={"limit": 10000}).json()
                            if r["stream"] == "system" and r["line"].startswith("$ ")]
                assert len(launches) == 1, f"job {j} was launched {len(launches)} times"
    finally:
        stop_studio(studio)
        redis.kill()
