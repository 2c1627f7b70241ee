"""Fault injection on the one supervisor: a database outage in the middle of a run, a reporter
(MLflow/W&B) outage, and the recovery of what a dead worker left unread in the run folder.
Each checks the run's final state, its log (no gap, no duplicate) and that no process is left."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import event, update
from sqlalchemy.exc import OperationalError

from backend.db.models import Job
from backend.db.session import get_engine, session_scope
from backend.services import jobs
from backend.settings import get_settings
from tests.backend.test_jobs_supervision import script, started_job
from tests.conftest import PG_ADMIN_URL
from worker import processes
from worker.reporting import ReporterPump
from worker.training.launch import supervise

N = 60
# A stand-in trainer: N numbered lines over ~6 s, a metrics row every 10, then a final model and,
# last, the outcome a trainer writes (backend/core/run_outcome.py).
PROGRAM = f"""import json, os, time
run = os.path.dirname(os.environ["SPEC"])
for i in range({N}):
    print("line", i, flush=True)
    if i % 10 == 9:
        with open(os.path.join(run, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({{"step": i + 1, "loss": 1.0 / (i + 1)}}) + "\\n")
    time.sleep(0.1)
os.makedirs(os.path.join(run, "final"), exist_ok=True)
open(os.path.join(run, "final", "config.json"), "w").write("{{}}")
open(os.path.join(run, "outcome.json"), "w").write(json.dumps({{"outcome": "done", "step": {N}}}))
"""


def outage(kind: str, seconds: float) -> None:
    """Make the database unreachable for ``seconds``: PostgreSQL refuses connections to the test
    database and drops the open ones; SQLite (one file, no server) fails every statement."""
    if kind == "postgresql":
        name = get_engine().url.database
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            time.sleep(seconds)
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        return
    engine = get_engine()

    def fail(*_a, **_k):  # noqa: ANN002, ANN003
        raise OperationalError("statement", {}, sqlite3.OperationalError("disk I/O error"))

    event.listen(engine, "before_cursor_execute", fail)
    time.sleep(seconds)
    event.remove(engine, "before_cursor_execute", fail)


def stand_in(tmp_path):  # noqa: ANN001, ANN201
    """A launch of PROGRAM (it finds its run folder through SPEC)."""
    launch = script(tmp_path, PROGRAM)
    return dataclasses.replace(launch, env={**launch.env, "SPEC": str(launch.spec_path)})


def assert_stored_once(api, job_id: int) -> None:
    """The stand-in's whole output is in the job, in order, once: every line (the supervisor's
    own lines too: ``$ command``, the verdict) and metrics row."""
    rows = stored_lines(api, job_id)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    system = [r["line"] for r in rows if r["stream"] == "system"]
    assert len(set(system)) == len(system) and system[0].startswith("$ "), system
    assert [r["line"] for r in rows if r["stream"] == "stdout"] == [f"line {i}" for i in range(N)]
    assert [m["step"] for m in api.get(f"/api/jobs/{job_id}/metrics").json()] == list(range(10, N + 1, 10))


def stored_lines(api, job_id: int) -> list[dict]:
    return api.get(f"/api/jobs/{job_id}/logs", params={"limit": 10000}).json()


def test_a_database_outage_mid_run_loses_no_line_and_kills_nothing(api, tmp_path, caplog):
    kind = "postgresql" if "postgresql" in str(get_engine().url) else "sqlite"
    job_id = started_job(api)
    launch = stand_in(tmp_path)
    outcome: list[str] = []
    caplog.set_level(logging.WARNING, logger="worker.supervision")
    t = threading.Thread(target=lambda: outcome.append(supervise(job_id, launch)))
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "line 10\n" not in (launch.log_path.read_text()
                                                              if launch.log_path.exists() else ""):
        time.sleep(0.05)
    outage(kind, 3.0)
    t.join(120)
    assert outcome == ["succeeded"], api.get(f"/api/jobs/{job_id}").json()
    assert any("database write failed" in r.message for r in caplog.records), "the outage never hit the worker"
    assert_stored_once(api, job_id)
    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["step"] == N
    assert processes.spec_processes(launch.spec_path) == []


def test_an_error_right_after_a_commit_stores_no_batch_twice(api, tmp_path):
    """The statement after each of the supervisor's first commits fails (a connection lost just
    after the commit landed). A batch whose commit landed must not be stored again on retry."""
    job_id = started_job(api)
    launch = stand_in(tmp_path)
    engine, armed, hits = get_engine(), threading.Event(), []
    supervisor = threading.get_ident()  # supervise() runs here; the API's own sweeper shares the engine

    def arm(_conn):  # noqa: ANN001 - from the first stored batch on (the run has started)
        if len(hits) < 8 and launch.log_path.exists() and threading.get_ident() == supervisor:
            armed.set()

    def fail_once(*_a, **_k):  # noqa: ANN002, ANN003
        if armed.is_set() and threading.get_ident() == supervisor:
            armed.clear()
            hits.append(1)
            raise OperationalError("statement", {}, sqlite3.OperationalError("connection lost after commit"))

    event.listen(engine, "commit", arm)
    event.listen(engine, "before_cursor_execute", fail_once)
    try:
        assert supervise(job_id, launch) == "succeeded"
    finally:
        event.remove(engine, "commit", arm)
        event.remove(engine, "before_cursor_execute", fail_once)
    assert len(hits) == 8
    assert_stored_once(api, job_id)


def test_recovery_stores_what_a_dead_worker_left_unread_once(api, tmp_path):
    """The worker stored the first lines (and their offsets) and died; the sweep reads the rest
    of the run folder from the stored offsets."""
    job_id = started_job(api)
    run = tmp_path / "runs" / str(job_id)
    run.mkdir(parents=True)
    stored = "".join(f"line {i}\n" for i in range(5))
    (run / "training_log.txt").write_text(stored + "".join(f"line {i}\n" for i in range(5, 12)) + "partial")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
    with session_scope() as s:
        jobs.append_logs(s, job_id, 1, [f"line {i}" for i in range(5)])
        jobs.append_metrics(s, job_id, 1, [{"step": 1, "loss": 2.0}])
        s.execute(update(Job).where(Job.id == job_id).values(
            run_dir=str(run), log_offset=len(stored), metrics_offset=len('{"step": 1, "loss": 2.0}\n'),
            heartbeat_at=jobs.now() - timedelta(seconds=120)))
        s.commit()
        assert jobs.recover_lost_jobs(s, 60, lambda _: None) == [job_id]
        assert jobs.recover_lost_jobs(s, 60, lambda _: None) == []  # a second sweep adds nothing
    rows = stored_lines(api, job_id)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["line"] for r in rows if r["stream"] == "stdout"] == [f"line {i}" for i in range(12)] + ["partial"]
    assert "stopped sending heartbeats" in rows[-1]["line"]
    assert [m["step"] for m in api.get(f"/api/jobs/{job_id}/metrics").json()] == [1, 2]


class FlakyTarget:
    """A reporting target that is down for its first ``down`` calls, and slow."""

    def __init__(self, down: int) -> None:
        self.down, self.calls, self.rows, self.closed = down, 0, [], False

    def log(self, rows):  # noqa: ANN001, ANN201
        self.calls += 1
        time.sleep(0.05)
        if self.calls <= self.down:
            raise ConnectionError("tracking server unreachable")
        self.rows.extend(rows)

    def close(self):  # noqa: ANN201
        self.closed = True


def test_a_reporter_outage_delays_metrics_but_loses_none_and_never_blocks():
    target = FlakyTarget(down=4)
    pump = ReporterPump("mlflow", lambda: target, max_backoff=0.2)
    started = time.monotonic()
    for step in range(1, 31):
        pump.log([{"step": step, "loss": 1.0 / step}])
    assert time.monotonic() - started < 0.5  # the supervisor's loop never waits for the target
    pump.close(timeout=30)
    assert [r["step"] for r in target.rows] == list(range(1, 31)) and target.closed
    notes = pump.notes()
    assert notes[0].startswith("reporting to mlflow failed (ConnectionError: tracking server unreachable)")
    assert notes[-1] == "reporting to mlflow works again; no metric was lost"


@pytest.fixture(autouse=True)
def _settings_reset():
    yield
    get_settings.cache_clear()


def test_evaluations_hold_gpu_leases_like_jobs_and_release_them_when_they_end(api):
    from backend.db.models import Evaluation, JobStatus
    from backend.services import evaluations, scheduling

    job_id = started_job(api)
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.failed))
        s.commit()
        scheduling.register_worker(s, "w", "node-a", 2, None)
        ds = s.get(Job, job_id).dataset_id
        evs = [Evaluation(dataset_id=ds, models=[], status=JobStatus.queued) for _ in range(2)]
        s.add(evs[0])
        s.commit()
        job = Job(dataset_id=ds, model_id=s.get(Job, job_id).model_id, preset="x", gpus=1)
        s.add(job)
        s.commit()
        s.add(evs[1])
        s.commit()
        # one queue in submission order: the first evaluation, the job, the second evaluation
        first = scheduling.claim_next(s, "w", "node-a", 2, 0, 1)
        assert (first.kind, first.run_id, first.gpu_ids) == ("evaluation", evs[0].id, [0])
        claim = scheduling.claim_next(s, "w", "node-a", 2, 0, 1)
        assert (claim.kind, claim.run_id, claim.gpu_ids) == ("job", job.id, [1])  # the GPU the evaluation left
        assert scheduling.claim_next(s, "w", "node-a", 2, 0, 1) is None  # none free: it waits, queued
        assert s.get(Evaluation, evs[1].id).status == JobStatus.queued
        evaluations.transition(s, evs[0].id, JobStatus.running)
        evaluations.transition(s, evs[0].id, JobStatus.succeeded)
        again = scheduling.claim_next(s, "w", "node-a", 2, 0, 1)
        assert (again.kind, again.run_id, again.gpu_ids) == ("evaluation", evs[1].id, [0])


def sse(api, url: str, **headers) -> list[tuple[str, str, dict]]:
    import json

    out, ident, kind = [], None, None
    for line in api.get(url, headers=headers).text.splitlines():
        if line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            out.append((ident, kind, json.loads(line[6:])))
    return out


def test_evaluations_stream_through_the_same_sse_implementation_as_jobs(api):
    """Cursor ids, resume after Last-Event-ID without gap or repeat, status then end."""
    from backend.db.models import Evaluation, JobStatus
    from backend.services import evaluations

    job_id = started_job(api)
    with session_scope() as s:
        ev = Evaluation(dataset_id=s.get(Job, job_id).dataset_id, models=[], status=JobStatus.running)
        s.add(ev)
        s.commit()
        evaluations.append_logs(s, ev.id, 1, [f"line {i}" for i in range(5)])
        evaluations.transition(s, ev.id, JobStatus.succeeded)
        ev_id = ev.id
        jobs.append_logs(s, job_id, 1, ["a", "b"])
        jobs.append_metrics(s, job_id, 1, [{"step": 1}])
        jobs.transition(s, job_id, JobStatus.failed)
    events = sse(api, f"/api/evaluations/{ev_id}/events")
    assert [(i, d["line"]) for i, k, d in events if k == "log"] == [(str(n), f"line {n - 1}") for n in range(1, 6)]
    assert [k for _, k, _ in events][-2:] == ["status", "end"] and events[-1][2]["status"] == "succeeded"
    rest = sse(api, f"/api/evaluations/{ev_id}/events", **{"Last-Event-ID": "3"})
    assert [d["seq"] for _, k, d in rest if k == "log"] == [4, 5]
    job_events = sse(api, f"/api/jobs/{job_id}/events", **{"Last-Event-ID": "1:0"})
    assert [(i, k) for i, k, _ in job_events][:2] == [("2:0", "log"), ("2:1", "metric")]


def test_a_batch_of_worker_lines_and_program_lines_gets_consecutive_numbers(api, tmp_path):
    """The executor's own lines (e.g. Slurm's) and the program's come in the same batch."""
    from backend.services.runs import JOB, RunRecord
    from worker.supervision import Batch

    job_id = started_job(api)
    record = RunRecord(JOB, job_id, tmp_path)
    with session_scope() as s:
        record.store(s, Batch(["$ launch"], ["slurm: submitted batch job 7", "hello"], [{"step": 1}], 10, 5))
        record.store(s, Batch([], ["more"], [], 15, 5))
    rows = stored_lines(api, job_id)
    assert [(r["seq"], r["stream"], r["line"]) for r in rows] == [
        (1, "system", "$ launch"), (2, "stdout", "slurm: submitted batch job 7"), (3, "stdout", "hello"),
        (4, "stdout", "more")]
    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "running" and job["step"] == 1
    with session_scope() as s:
        assert (s.get(Job, job_id).log_offset, s.get(Job, job_id).metrics_offset) == (15, 5)


def test_a_batch_whose_commit_landed_before_the_connection_died_is_not_stored_twice(api, tmp_path, monkeypatch):
    from backend.services.runs import JOB, RunRecord
    from worker.supervision import Batch

    job_id = started_job(api)
    record = RunRecord(JOB, job_id, tmp_path)
    batch = Batch(["$ launch"], ["a", "b"], [{"step": 1}], 4, 12)
    real = RunRecord._stored

    def lost_answer(self, b):  # noqa: ANN001, ANN202 - the server committed; the client never heard
        monkeypatch.setattr(RunRecord, "_stored", real)
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))

    monkeypatch.setattr(RunRecord, "_stored", lost_answer)
    with pytest.raises(OperationalError), session_scope() as s:
        record.store(s, batch)
    with session_scope() as s:
        record.store(s, batch)  # the supervisor's retry of the same batch
        record.store(s, Batch([], ["c"], [], 6, 12))
    assert [(r["seq"], r["line"]) for r in stored_lines(api, job_id)] == [(1, "$ launch"), (2, "a"), (3, "b"), (4, "c")]
    assert [m["seq"] for m in api.get(f"/api/jobs/{job_id}/metrics").json()] == [1]


def test_the_api_process_needs_no_torch(tmp_path):
    """Chats and model imports are queued for the workers: the API imports neither torch nor
    the worker package, also after serving a chat submission and an import submission."""
    import subprocess
    import sys

    code = """
import os, sys
from fastapi.testclient import TestClient
from backend.api.app import create_app
with TestClient(create_app()) as api:
    api.post("/api/auth/login", json={})
    model = api.get("/api/models").json()[0]
    from backend.db.session import session_scope
    from backend.services import chat, playground
    from backend.settings import get_settings
    with session_scope() as s:  # what POST /chat does before it streams
        fields = playground.prepare_chat(s, get_settings(), None, model["id"], messages=[
            {"role": "user", "content": "hi"}], image=None, job_id=None, checkpoint=None)
        chat.submit(s, owner_id=None, max_new_tokens=4, temperature=0.0, **fields)
    os.makedirs(os.environ["ROOT"] + "/m", exist_ok=True)
    r = api.post("/api/models/import", json={"path": os.environ["ROOT"] + "/m", "wait": False})
    assert r.status_code == 202, r.text
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "worker", "deepspeed")))
"""
    env = {**__import__("os").environ, "VLSTUDIO_DATA_DIR": str(tmp_path / "data"), "ROOT": str(tmp_path),
           "VLSTUDIO_DATA_ROOTS": str(tmp_path), "VLSTUDIO_AUTH_ENABLED": "false"}
    env.pop("VLSTUDIO_DATABASE_URL", None)
    env.pop("VLSTUDIO_BROKER_URL", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
