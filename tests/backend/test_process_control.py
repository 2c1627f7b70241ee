"""Process control through real torchrun: it starts each trainer in a session of its own, so
signalling its process group reaches only the agent. The worker must reach every trainer:
cancel -> SIGTERM to each trainer (not the agent), escalation -> SIGKILL of all of them, and
the /proc lookup of a run's processes never answers "none" when it could not look."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backend.db.session import session_scope
from backend.services import jobs
from backend.settings import get_settings
from tests.backend.test_jobs_supervision import started_job
from worker import processes
from worker.local import LocalExecutor
from worker.reaper import Reaper
from worker.runtime import Launch, LaunchError
from worker.training.launch import supervise

# A stand-in trainer under real torchrun: reports its pid and session, then works until told
# to stop; STUBBORN ignores SIGTERM (a checkpoint that takes longer than the grace period).
TRAINER = """import os, signal, sys, time
stop = []
if os.environ.get("STUBBORN"):
    signal.signal(signal.SIGTERM, lambda *a: print("rank", os.environ["RANK"], "ignores SIGTERM", flush=True))
else:
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print("rank", os.environ["RANK"], "pid", os.getpid(), "sid", os.getsid(0), flush=True)
while not stop:
    time.sleep(0.05)
print("rank", os.environ["RANK"], "saved a checkpoint and stops", flush=True)
"""


def torchrun_launch(tmp_path: Path, nproc: int = 2, **env: str) -> Launch:
    (tmp_path / "stand_in_trainer.py").write_text(TRAINER)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "spec.json").write_text("{}")
    return Launch(name="t", module="stand_in_trainer", spec_path=run / "spec.json", run_dir=run,
                  log_path=run / "training_log.txt", nproc_per_node=nproc, port=processes_free_port(),
                  gpu_ids=(), env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env})


def processes_free_port() -> int:
    from tests.conftest import free_port

    return free_port()


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = pred()
        if out:
            return out
        time.sleep(0.1)
    raise AssertionError(f"no {what} in {timeout}s")


def trainer_lines(launch: Launch) -> list[str]:
    text = launch.log_path.read_text(errors="replace") if launch.log_path.exists() else ""
    return [x for x in text.splitlines() if x.startswith("rank ") and " pid " in x]


def test_the_lookup_finds_a_process_in_a_session_of_its_own_and_fails_loudly(tmp_path, monkeypatch):
    spec = tmp_path / "spec.json"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--spec", str(spec)],
                            start_new_session=True)
    try:
        found = wait_for(lambda: processes.spec_processes(spec), 10, "process")
        assert [p.pid for p in found] == [proc.pid] and found[0].pgid == proc.pid != os.getpgrp()
        assert processes.spec_processes(tmp_path / "other.json") == []
        monkeypatch.setattr(processes, "PROC", tmp_path / "no-proc-here")
        with pytest.raises(processes.ProcessLookupFailed):
            processes.spec_processes(spec)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_terminate_reaches_every_trainer_and_the_agent_ends_cleanly(tmp_path):
    launch = torchrun_launch(tmp_path)
    ex = LocalExecutor()
    ex.start(launch)
    lines = wait_for(lambda: len(trainer_lines(launch)) == 2 and trainer_lines(launch), 120, "two trainers")
    pids = {int(x.split()[3]) for x in lines}
    # each trainer leads a session of its own: torchrun's process group does not hold them
    assert all(int(x.split()[5]) == int(x.split()[3]) for x in lines)
    assert {p.pid for p in processes.trainers(processes.spec_processes(launch.spec_path))} == pids
    ex.terminate()
    rc = wait_for(lambda: ex.poll() is not None and [ex.poll()], 60, "end")[0]
    log = launch.log_path.read_text()
    assert rc == 0, log
    assert log.count("saved a checkpoint and stops") == 2 and "Traceback" not in log, log
    assert processes.spec_processes(launch.spec_path) == []


@pytest.mark.slow
def test_cancel_escalates_to_sigkill_of_every_trainer_after_the_grace_period(api, tmp_path, monkeypatch):
    monkeypatch.setenv("VLSTUDIO_CANCEL_GRACE_SECONDS", "2")
    get_settings.cache_clear()
    job_id = started_job(api)
    launch = torchrun_launch(tmp_path, STUBBORN="1")
    outcome: list[str] = []
    t = threading.Thread(target=lambda: outcome.append(supervise(job_id, launch)))
    t.start()
    lines = wait_for(lambda: len(trainer_lines(launch)) == 2 and trainer_lines(launch), 120, "two trainers")
    pids = [int(x.split()[3]) for x in lines]
    assert api.post(f"/api/jobs/{job_id}/cancel").json()["status"] == "stopping"
    t.join(60)
    assert outcome == ["cancelled"]
    job = api.get(f"/api/jobs/{job_id}").json()
    assert "killed after 2s grace" in job["failure_reason"]
    assert launch.log_path.read_text().count("ignores SIGTERM") == 2  # the trainers got it, not the agent
    assert processes.spec_processes(launch.spec_path) == []
    assert not [pid for pid in pids if alive(pid)]


def alive(pid: int) -> bool:
    """Running, not a zombie (a dead trainer re-parented to an init that does not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_the_reaper_ends_the_trainers_of_a_run_finished_elsewhere(api, tmp_path, monkeypatch):
    """A worker killed with -9 leaves its trainers behind; once a sweep finished the job, the
    reaper of any worker on the node stops them (SIGTERM), then kills what is left."""
    monkeypatch.setenv("VLSTUDIO_CANCEL_GRACE_SECONDS", "1")
    get_settings.cache_clear()
    job_id = started_job(api)
    settings = get_settings()
    run = settings.data_path.resolve() / "runs" / str(job_id)
    run.mkdir(parents=True)
    launch = torchrun_launch(tmp_path, STUBBORN="1")
    launch = dataclasses.replace(launch, run_dir=run, spec_path=run / "spec.json", log_path=run / "training_log.txt")
    launch.spec_path.write_text("{}")
    ex = LocalExecutor()
    ex.start(launch)  # no supervisor follows it: as after a kill -9 of the worker
    wait_for(lambda: len(trainer_lines(launch)) == 2, 120, "two trainers")
    reaper = Reaper(settings)
    assert reaper.tick(set()) == []  # the job is active: not an orphan
    with session_scope() as s:
        jobs.transition(s, job_id, jobs.S.failed, failure_reason="swept")
    assert reaper.tick(set()) == [("runs", job_id)]
    wait_for(lambda: launch.log_path.read_text().count("ignores SIGTERM") == 2, 10, "SIGTERM to both trainers")
    time.sleep(1.5)
    reaper.tick(set())
    wait_for(lambda: processes.spec_processes(launch.spec_path) == [], 10, "no process left")
    assert ex.proc is not None and ex.proc.wait(10) == -signal.SIGKILL


def test_more_than_one_node_is_refused_on_the_local_backend(tmp_path):
    launch = Launch(name="t", module="m", spec_path=tmp_path / "s.json", run_dir=tmp_path,
                    log_path=tmp_path / "log", nnodes=2)
    with pytest.raises(LaunchError, match="Slurm backend"):
        LocalExecutor().start(launch)


def test_more_than_one_node_is_refused_at_submission_on_the_local_backend(api):
    from tests.backend.test_api import demo_files, upload, zip_bytes

    ds = upload(api, zip_bytes(demo_files(2))).json()["id"]
    r = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1, "hyperparameters": {"nnodes": 2}})
    assert r.status_code == 422, r.text
    assert {"field": "nnodes", "message": "nnodes=2: the local backend runs a job on one node; multi-node "
            "training needs the Slurm backend (VLSTUDIO_BACKEND=slurm)"} in r.json()["errors"], r.text
