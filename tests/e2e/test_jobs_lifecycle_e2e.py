"""Cancel, checkpoint, resume, SSE resume after a reconnect, through the REST API with real
workers running torchrun + DeepSpeed: embedded (SQLite + filesystem broker) and production
(PostgreSQL + Redis, where the API is also killed with -9 mid-run and started again).

The cancel's SIGTERM lands while a checkpoint is being written (its folder exists, not yet
sealed; the trainers are held there with SIGSTOP while the job is cancelled): that save
completes, the trainer stops after its next step with a second checkpoint, and the job ends
``cancelled`` with a clean log."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from backend.core import checkpoints
from backend.services.dataset_sweep import REASON as SWEPT
from tests.backend.test_api import zip_bytes
from tests.conftest import restart_api, start_studio, stop_studio
from tests.e2e.jobs_helpers import metric_steps, read_sse, submit, upload_demo, wait_until
from worker import processes

pytestmark = pytest.mark.slow
STEPS = 14
SAVE_STEPS = 5  # few saves (each costs ~1 s here); the first one in progress gets the SIGTERM


def big_text_zip() -> bytes:
    """60,000 text samples: their validation still runs when the API is killed right after the upload."""
    return zip_bytes({"big.jsonl": "".join(json.dumps(
        {"id": i, "conversations": [{"from": "human", "value": "hi " * 20}, {"from": "gpt", "value": "yo"}]}) + "\n"
        for i in range(60000))})


def freeze(pids: list[int]) -> None:
    """SIGSTOP, and wait until the kernel shows every one stopped (state T)."""
    processes.send(pids, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T" for p in pids):
        assert time.monotonic() < deadline, "the trainers did not stop"
        time.sleep(0.001)


def run_trainers(run_dir: Path) -> list[int]:
    trainers = [p.pid for p in processes.trainers(processes.spec_processes(run_dir / "spec.json"))]
    assert len(trainers) == 2, trainers
    return trainers


def cancel_inside_a_save(studio, job_id: int, run_dir: Path, steps: int) -> int:
    """Catch a periodic checkpoint being written (its folder there, not yet sealed), freeze the
    trainers there (SIGSTOP), cancel the job, send them the cancel's SIGTERM and let them go on:
    the signal lands inside the save whatever the machine's load. The step of that checkpoint.

    Only a save with a step after it: the save at ``max_steps`` ends the training, and a cancel
    caught in it has no next step to stop after (that was the flake: checkpoint-42 of 42 steps,
    caught when a slow API restart had used up the room before the cancel)."""
    trainers = run_trainers(run_dir)
    seen: set[Path] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for ckpt in (run_dir / "checkpoints").glob("checkpoint-*"):
            if ckpt in seen:
                continue
            seen.add(ckpt)
            at = int(ckpt.name.split("-")[1])
            assert at + 1 < steps, f"training reached {ckpt.name} of {steps} steps before a save could be caught"
            if checkpoints.is_complete(ckpt):
                continue  # saved between two looks: wait for the next one
            freeze(trainers)
            if checkpoints.is_complete(ckpt):  # sealed just before they stopped
                processes.send(trainers, signal.SIGCONT)
                continue
            with studio.api as api:
                assert api.post(f"/jobs/{job_id}/cancel").json()["status"] in ("stopping", "cancelled")
            processes.send(trainers, signal.SIGTERM)  # pending until they continue, mid-save
            processes.send(trainers, signal.SIGCONT)
            return int(ckpt.name.split("-")[1])
        time.sleep(0.002)
    raise AssertionError(f"no checkpoint save seen in progress in {run_dir}")


def kill_the_api_while_a_dataset_validates(studio, tmp_path: Path, job: dict, running: dict) -> None:
    """kill -9 of the API mid-run, with a dataset validating in it: the run goes on, the new API
    sees it, and the sweep fails the orphaned validation and removes its files."""
    with studio.api as api:
        r = api.post("/datasets", files={"file": ("big.zip", big_text_zip(), "application/zip")},
                     data={"background": "true"})
    assert r.status_code == 202 and r.json()["status"] == "validating", r.text
    orphan = r.json()["id"]
    restart_api(studio, signal.SIGKILL)
    after = wait_until(studio, job["id"], lambda j: j["step"] > running["step"], "progress after the restart")
    assert after["status"] == "running" and after["worker"] == running["worker"]
    # The run went on; now hold its trainers while the new API sweeps the validation (up to a
    # heartbeat timeout and more on a loaded machine), so that the steps left for the cancel do
    # not depend on how long that takes. The worker's heartbeats for the job go on meanwhile.
    trainers = run_trainers(Path(running["run_dir"]))
    freeze(trainers)
    deadline = time.monotonic() + 60
    try:
        with studio.api as api:
            while (ds := api.get(f"/datasets/{orphan}").json())["status"] == "validating":
                assert time.monotonic() < deadline, ds
                time.sleep(0.5)
    finally:
        processes.send(trainers, signal.SIGCONT)
    assert ds["status"] == "failed" and ds["report"]["message"] == SWEPT, ds
    assert not (studio.data_dir / "datasets" / str(orphan)).exists()


def cancel_then_resume(studio, tmp_path: Path, kill_api_midway: bool = False) -> None:
    steps = STEPS * 3 if kill_api_midway else STEPS  # room for a slow restart before the cancel
    ds = upload_demo(studio, tmp_path)
    job = submit(studio, ds, max_steps=steps, save_steps=SAVE_STEPS)
    running = wait_until(studio, job["id"], lambda j: j["step"] >= 1, "step 1")
    run_dir = Path(running["run_dir"])
    # SSE: read part of the stream now, resume from its last event id once the job ended (after
    # the API that served it was killed, in production)
    url, headers = f"{studio.url}/api/jobs/{job['id']}/events", studio.headers
    first, last_id = read_sse(url, headers, max_events=5)
    if kill_api_midway:
        kill_the_api_while_a_dataset_validates(studio, tmp_path, job, running)
    interrupted = cancel_inside_a_save(studio, job["id"], run_dir, steps)
    done = studio.wait_job(job["id"], timeout=300)
    assert done["status"] == "cancelled", done
    # The save the signal landed in completed (every rank's files, sealed), and the trainer
    # stopped after its next step with one more checkpoint, the one a resume takes.
    cut = run_dir / "checkpoints" / f"checkpoint-{interrupted}"
    assert checkpoints.is_complete(cut) and (cut / "trainer_state.json").exists()
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in cut.iterdir()}
    ckpt = Path(done["last_checkpoint"])
    assert ckpt == run_dir / "checkpoints" / f"checkpoint-{interrupted + 1}" and checkpoints.is_complete(ckpt)
    saved_at = interrupted + 1
    assert saved_at < steps and f"last checkpoint {ckpt.name}" in done["failure_reason"]
    # Every trainer got the SIGTERM (not torchrun's agent): they saved, exited 0, the agent ended
    # cleanly, and the log ends with the verdict, without a torchrun traceback.
    with studio.api as api:
        rows = api.get(f"/jobs/{job['id']}/logs", params={"limit": 10000}).json()
    log = [r["line"] for r in rows]
    assert sum("stopped on request; checkpoint saved" in x for x in log) == 1, log[-30:]
    assert not [x for x in log if "Traceback" in x or "ChildFailedError" in x], log[-40:]
    assert log[-1] == f"job cancelled: by the user; last checkpoint {ckpt.name}" and done["exit_code"] == 0
    # The trainer's whole output, in order, once: no gap, no duplicate.
    written = (run_dir / "training_log.txt").read_text(errors="replace").splitlines()
    assert [r["line"] for r in rows if r["stream"] == "stdout"] == [x.split("\r")[-1] for x in written]
    assert processes.spec_processes(run_dir / "spec.json") == [], "a trainer survived the cancel"
    for name in ("spec.json", "meta.json", "ds_config.json", "command.txt"):
        assert name in done["run_files"], name
    assert done["command"].endswith(f"--spec {done['run_dir']}/spec.json")

    rest, _ = read_sse(url, headers, last_event_id=last_id)
    with studio.api as api:
        stored = [row["seq"] for row in rows]
        stored_metrics = [m["seq"] for m in api.get(f"/jobs/{job['id']}/metrics").json()]
    assert [d["seq"] for k, d in first + rest if k == "log"] == stored == list(range(1, len(stored) + 1)), \
        "the resumed log stream has gaps or repeats"
    assert [d["seq"] for k, d in first + rest if k == "metric"] == stored_metrics, \
        "the resumed metric stream has gaps or repeats"
    assert metric_steps(studio, job["id"]) == list(range(1, saved_at + 1))  # each step's row once
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


def test_cancel_during_a_save_keeps_the_checkpoint_and_resume_continues_embedded(embedded_studio, tmp_path):
    cancel_then_resume(embedded_studio, tmp_path)


@pytest.mark.production
def test_cancel_during_a_save_after_kill_9_of_the_api_production(tmp_path, pg_database, redis_broker):
    studio = start_studio(tmp_path, database_url=pg_database, broker_url=redis_broker,
                          extra_env={"VLSTUDIO_HEARTBEAT_SECONDS": "1", "VLSTUDIO_HEARTBEAT_TIMEOUT_SECONDS": "8"})
    try:
        cancel_then_resume(studio, tmp_path, kill_api_midway=True)
    finally:
        stop_studio(studio)
