"""The job service against a real database (SQLite and PostgreSQL): legal transitions,
scheduling with fake GPU counts, capacity and memory refusal, recovery of lost workers,
resume and retry."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from backend.core import checkpoints, run_outcome
from backend.db.models import Job, JobStatus, Model
from backend.db.session import session_scope
from backend.services import jobs, scheduling
from backend.services.errors import Conflict
from tests.backend.test_api import demo_files, upload, zip_bytes

S = JobStatus


@pytest.fixture
def ds(api) -> int:
    return upload(api, zip_bytes(demo_files(2))).json()["id"]


def submit(api, ds: int, **extra) -> dict:
    hyper = extra.pop("hyperparameters", {})
    r = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1, "preset": "demo", "hyperparameters": hyper,
                                    **extra})
    assert r.status_code == 201, r.text
    return r.json()


def gpu_job(api, ds: int, gpus: int, **extra) -> dict:
    return submit(api, ds, hyperparameters={"gpus": gpus, "nproc_per_node": gpus}, **extra)


def force_status(job_id: int, status: JobStatus, **fields) -> None:
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status, **fields))


def test_every_illegal_transition_is_refused(api, ds):
    job_id = submit(api, ds)["id"]
    for current, new in itertools.product(S, S):
        force_status(job_id, current)
        with session_scope() as s:
            if new in jobs.LEGAL[current]:
                assert jobs.transition(s, job_id, new) is True
                assert jobs.get_job(s, job_id).status == new
            else:
                with pytest.raises(Conflict, match=f"from {current.value} to {new.value}"):
                    jobs.transition(s, job_id, new)


def test_two_gpu_node_runs_two_one_gpu_jobs_with_their_own_devices_and_ports(api, ds):
    with session_scope() as s:
        scheduling.register_worker(s, "w1", "node-a", 2, None)
    a, b, c = (gpu_job(api, ds, 1)["id"] for _ in range(3))
    urgent = gpu_job(api, ds, 1, priority=5)["id"]
    with session_scope() as s:
        first = scheduling.claim_next(s, "w1", "node-a", 2, 0, 1)
        second = scheduling.claim_next(s, "w1", "node-a", 2, 0, 1)
        assert scheduling.claim_next(s, "w1", "node-a", 2, 0, 1) is None  # both GPUs leased: the rest wait
    assert (first.run_id, second.run_id) == (urgent, a)  # priority first, then submission order
    assert {tuple(first.gpu_ids), tuple(second.gpu_ids)} == {(0,), (1,)}
    assert first.port != second.port
    job = api.get(f"/api/jobs/{a}").json()
    assert (job["status"], job["node"], job["gpu_ids"]) == ("starting", "node-a", str(second.gpu_ids[0]))
    assert "vlstudio_gpu_leases{node=\"node-a\"} 2" in api.get("/metrics").text
    with session_scope() as s:  # a finished job gives its GPU back
        jobs.transition(s, urgent, S.failed, failure_reason="test")
        third = scheduling.claim_next(s, "w1", "node-a", 2, 0, 1)
    assert third.run_id == b and third.gpu_ids == first.gpu_ids
    assert api.get(f"/api/jobs/{c}").json()["status"] == "queued"


def test_a_two_gpu_job_waits_while_a_one_gpu_job_backfills(api, ds):
    with session_scope() as s:
        scheduling.register_worker(s, "w1", "node-a", 2, None)
    running = gpu_job(api, ds, 1)["id"]
    big = gpu_job(api, ds, 2)["id"]
    small = gpu_job(api, ds, 1)["id"]
    with session_scope() as s:
        assert scheduling.claim_next(s, "w1", "node-a", 2, 0, 1).run_id == running
        assert scheduling.claim_next(s, "w1", "node-a", 2, 0, 1).run_id == small
    assert api.get(f"/api/jobs/{big}").json()["status"] == "queued"


def test_cpu_jobs_are_limited_by_cpu_slots(api, ds):
    a, b = submit(api, ds)["id"], submit(api, ds)["id"]
    with session_scope() as s:
        assert scheduling.claim_next(s, "w1", "n", 0, 0, 1).run_id == a
        assert scheduling.claim_next(s, "w1", "n", 0, 1, 1) is None
        assert scheduling.claim_next(s, "w1", "n", 0, 1, 2).run_id == b


def test_job_asking_for_more_gpus_than_any_node_is_rejected(api, ds):
    with session_scope() as s:
        scheduling.register_worker(s, "w1", "node-a", 2, None)
    r = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1, "hyperparameters": {"gpus": 4,
                                                                                        "nproc_per_node": 4}})
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "gpus", "message": "the job asks for 4 GPU(s) but the largest node has "
                                                              "2 GPU(s)"}]


def test_job_that_cannot_fit_is_refused_with_estimate_and_suggestions(api, ds):
    from model_configs import MINI_2B_V1_5

    from backend.core.model_shapes import shapes_from_config

    with session_scope() as s:
        s.add(Model(name="renamed-2b", path="/nowhere", family="internlm2", template="internlm2-chat",
                    info={"shapes": shapes_from_config(MINI_2B_V1_5).to_dict()}))
        scheduling.register_worker(s, "small", "node-a", 8, 8 * 1024)
    model_id = next(m["id"] for m in api.get("/api/models").json() if m["name"] == "renamed-2b")
    body = {"dataset_id": ds, "model_id": model_id, "preset": "2b-full"}
    r = api.post("/api/jobs", json=body)
    assert r.status_code == 422, r.text
    problem = r.json()["errors"][0]
    assert problem["field"] == "memory" and problem["estimate"]["exact_gib"] > 8
    assert any("LoRA" in x for x in problem["suggestions"]) and any("ZeRO-3" in x for x in problem["suggestions"])
    est = api.post("/api/jobs/estimate", json=body).json()["estimate"]
    assert est["per_device_gib"] == problem["estimate"]["per_device_gib"]
    # the exact part fits, the approximate total does not: queued, with a warning, not refused
    with session_scope() as s:
        scheduling.register_worker(s, "small", "node-a", 8, 16 * 1024)
    job = api.post("/api/jobs", json=body).json()
    assert job["status"] == "queued" and "may not fit" in job["memory_estimate"]["warning"]
    with session_scope() as s:
        scheduling.register_worker(s, "small", "node-a", 8, 80 * 1024)
    job = api.post("/api/jobs", json=body).json()
    assert job["status"] == "queued" and job["memory_estimate"]["per_device_gib"] == est["per_device_gib"]
    assert "warning" not in job["memory_estimate"]


def fake_checkpoint(run_dir: Path, step: int, sealed: bool = True) -> Path:
    ckpt = run_dir / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    if sealed:
        checkpoints.seal(ckpt, step)
    return ckpt


def test_lost_worker_fails_its_job_and_requeues_it_when_asked(api, ds, tmp_path):
    keep = submit(api, ds, requeue_on_failure=True)["id"]
    drop = submit(api, ds)["id"]
    fresh = submit(api, ds)["id"]
    with session_scope() as s:
        for j in (keep, drop, fresh):
            assert jobs.claim_job(s, j, "w-dead")
    old = datetime.now(UTC) - timedelta(seconds=120)
    fake_checkpoint(tmp_path / "run", 2)
    ckpt = fake_checkpoint(tmp_path / "run", 4)
    fake_checkpoint(tmp_path / "run", 6, sealed=False)  # killed mid-save: never resumed from
    force_status(keep, S.running, heartbeat_at=old, run_dir=str(tmp_path / "run"))
    force_status(drop, S.running, heartbeat_at=old)
    with session_scope() as s:
        assert sorted(jobs.recover_lost_jobs(s, 60, lambda _: None)) == [keep, drop]
    for j in (keep, drop):
        job = api.get(f"/api/jobs/{j}").json()
        assert job["status"] == "failed" and "w-dead stopped sending heartbeats" in job["failure_reason"]
    assert api.get(f"/api/jobs/{fresh}").json()["status"] == "starting"
    children = [j for j in api.get("/api/jobs").json() if j["parent_job_id"] is not None]
    assert [(c["parent_job_id"], c["status"], c["resume_from_checkpoint"]) for c in children] == [
        (keep, "queued", str(ckpt))]
    assert any("requeued as job" in line for line in api.get(f"/api/jobs/{keep}").json()["last_lines"])


def test_a_worker_lost_after_its_trainer_finished_leaves_the_job_succeeded(api, ds, tmp_path):
    """The trainer's outcome.json tells a finished run from a cut one: a worker killed between
    the trainer's last write and its own verdict neither fails the job nor retrains it."""
    done, cut = (submit(api, ds, requeue_on_failure=True)["id"] for _ in range(2))
    old = datetime.now(UTC) - timedelta(seconds=120)
    for j, outcome in ((done, run_outcome.DONE), (cut, run_outcome.STOPPED)):
        with session_scope() as s:
            assert jobs.claim_job(s, j, "w-dead")
        run = tmp_path / f"run-{j}"
        fake_checkpoint(run, 12)
        run_outcome.write(run, outcome, 12)
        force_status(j, S.running, heartbeat_at=old, run_dir=str(run))
    with session_scope() as s:
        assert sorted(jobs.recover_lost_jobs(s, 60, lambda _: None)) == [done, cut]
    finished = api.get(f"/api/jobs/{done}").json()
    assert finished["status"] == "succeeded" and finished["failure_reason"] is None
    assert "after the trainer had finished; the final model is in final/" in finished["last_lines"][-1]
    assert api.get(f"/api/jobs/{cut}").json()["status"] == "failed"
    children = [j["parent_job_id"] for j in api.get("/api/jobs").json() if j["parent_job_id"] is not None]
    assert children == [cut]  # only the run that did not finish is resumed


def test_a_supervisor_crash_on_a_cluster_run_leaves_it_to_be_adopted_never_submitted_twice(api, ds, tmp_path):
    job_id = submit(api, ds, requeue_on_failure=True)["id"]
    with session_scope() as s:
        assert jobs.claim_job(s, job_id, "w-slurm")
    run = tmp_path / "run"
    run.mkdir()
    (run / scheduling.CLUSTER_JOB_FILE).write_text("4242\n")  # Slurm runs it on
    force_status(job_id, S.running, run_dir=str(run))
    with session_scope() as s:
        assert not jobs.record_crash(s, job_id, RuntimeError("boom"), "Traceback ...\nRuntimeError: boom")
    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "running" and any("its cluster job runs on" in x for x in job["last_lines"])
    assert not [j for j in api.get("/api/jobs").json() if j["parent_job_id"] == job_id]
    with session_scope() as s:  # its worker follows it again at once, and only once
        assert scheduling.adopt_cluster_jobs(s, "w-slurm", 60, set()) == [job_id]
        assert scheduling.adopt_cluster_jobs(s, "w-slurm", 60, {job_id}) == []
        assert scheduling.adopt_cluster_jobs(s, "w-other", 60, set()) == []  # its heartbeat is fresh
    (run / scheduling.CLUSTER_JOB_FILE).unlink()  # a local run: failed, as before
    with session_scope() as s:
        assert jobs.record_crash(s, job_id, RuntimeError("boom"), "Traceback ...")
    assert api.get(f"/api/jobs/{job_id}").json()["status"] == "failed"
    assert not [j for j in api.get("/api/jobs").json() if j["parent_job_id"] == job_id]


def test_resume_and_retry(api, ds, tmp_path):
    job_id = submit(api, ds)["id"]
    assert api.post(f"/api/jobs/{job_id}/resume").status_code == 409  # still queued
    api.post(f"/api/jobs/{job_id}/cancel")
    r = api.post(f"/api/jobs/{job_id}/resume")
    assert r.status_code == 409 and "retry" in r.json()["detail"]
    ckpt = fake_checkpoint(tmp_path / "run", 3)
    force_status(job_id, S.cancelled, run_dir=str(tmp_path / "run"))
    resumed = api.post(f"/api/jobs/{job_id}/resume").json()
    assert (resumed["status"], resumed["parent_job_id"], resumed["resume_from_checkpoint"]) == (
        "queued", job_id, str(ckpt))
    retried = api.post(f"/api/jobs/{job_id}/retry").json()
    assert retried["resume_from_checkpoint"] is None and retried["hyper"] == resumed["hyper"]


def test_racing_workers_never_claim_the_same_job(api, ds):
    ids = [submit(api, ds)["id"] for _ in range(12)]
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with session_scope() as s:
                c = scheduling.claim_next(s, name, "node-a", 0, 0, 100)
            if c is None:
                return
            with lock:
                claimed.append(c.run_id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids


def test_submission_survives_a_broker_outage(api, ds, monkeypatch):
    def down(job_id: int) -> str:
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr("backend.api.routes.jobs.wake_workers", down)
    job = submit(api, ds)
    assert job["status"] == "queued"  # the jobs table is the queue: a worker's poll finds it
    assert api.get(f"/api/jobs/{job['id']}").json()["status"] == "queued"
