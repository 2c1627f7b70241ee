"""Shutdown is not a crash (issue 26): a worker stopped with SIGTERM asks its jobs to checkpoint
and stop and records "worker ... shut down" on them (docs/jobs.md, Recovery). Its scheduler's
loop ends at the stop, and the runs' heartbeats ended with it: a drain longer than the heartbeat
timeout was swept as a lost worker ("stopped sending heartbeats... killed") while the worker was
alive, about to record the shutdown."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from backend.db.models import Job
from backend.db.models import JobStatus as S
from backend.db.session import session_scope
from backend.services import jobs, scheduling
from backend.settings import get_settings
from tests.backend.test_jobs_service import ds, force_status, submit  # noqa: F401
from worker.scheduler import Scheduler
from worker.training.launch import RunControl

NAME = "w-shut@node"


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_a_drain_longer_than_the_heartbeat_timeout_is_recorded_as_a_shutdown(api, ds, monkeypatch):  # noqa: F811
    settings = get_settings()
    monkeypatch.setattr(settings, "heartbeat_seconds", 0.2)
    monkeypatch.setattr(settings, "heartbeat_timeout_seconds", 1.0)
    monkeypatch.setattr(settings, "cancel_grace_seconds", 5.0)
    job = submit(api, ds)["id"]
    with session_scope() as s:
        scheduling.register_worker(s, NAME, "node", gpus=0, gpu_memory_mib=None, cpus=2)
    force_status(job, S.running, worker=NAME, heartbeat_at=datetime.now(UTC).replace(tzinfo=None))
    sched = Scheduler(NAME, settings)
    control = RunControl(None)
    errors: list[BaseException] = []

    def supervisor() -> None:  # the run's supervisor: the trainers take 3 s to checkpoint and stop
        try:
            while control.drain_reason is None:
                time.sleep(0.05)
            time.sleep(3.0)
            with session_scope() as s:
                assert jobs.transition(s, job, S.failed, failure_reason=control.drain_reason), "swept meanwhile"
        except BaseException as e:  # noqa: BLE001  # reported by the test below
            errors.append(e)

    run = threading.Thread(target=supervisor, daemon=True)
    sched.runs[("job", job)] = (run, control, 0)
    run.start()
    swept: list[int] = []
    done = threading.Event()

    def api_sweeper() -> None:  # what every API process and every other worker runs
        while not done.is_set():
            with session_scope() as s:
                swept.extend(jobs.recover_lost_jobs(s, settings.heartbeat_timeout_seconds, lambda *_: None))
            time.sleep(0.2)

    sweeper = threading.Thread(target=api_sweeper, daemon=True)
    sweeper.start()
    try:
        sched.shutdown()  # what Celery's warm shutdown (SIGTERM) calls
    finally:
        done.set()
        sweeper.join(5)
    assert not errors and not swept, (errors, swept)
    with session_scope() as s:
        row = s.get(Job, job)
        assert row.status == S.failed and row.failure_reason == f"worker {NAME} shut down", row.failure_reason
