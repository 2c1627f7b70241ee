"""A failed trainer's reason names its first real error, found 40+ lines before the end of
its log (where torchrun's banner is), through the worker's real supervision path."""

from __future__ import annotations

from tests.backend.test_jobs_supervision import script, started_job
from worker.training.launch import RunControl, supervise

TRAINER = """import subprocess, sys
rank = "def load(p):\\n    return open(p).read()\\nload('/data/shapes/images/0007.png')\\n"
subprocess.run([sys.executable, "-c", rank])  # a rank that raises: its traceback goes to the log
for i in range(45):
    print("torchrun banner line", i)  # what the last lines of the log show
sys.exit(1)
"""


def test_the_reason_names_the_trainer_error_not_the_banner(api, tmp_path):
    job_id = started_job(api)
    assert supervise(job_id, script(tmp_path, TRAINER), control=RunControl(None)) == "failed"
    reason = api.get(f"/api/jobs/{job_id}").json()["failure_reason"]
    first = reason.splitlines()[0]
    assert first == ("trainer exited with code 1; no checkpoint: FileNotFoundError: [Errno 2] No such file or "
                     "directory: '/data/shapes/images/0007.png' (<string>:2)"), reason
    assert reason.endswith("torchrun banner line 44")


def test_a_crash_of_the_supervisor_is_reported_as_what_it_was(api, monkeypatch):
    """Not as "worker killed or its node went down" once the heartbeat goes stale."""
    from types import SimpleNamespace

    from backend.services import scheduling
    from worker import scheduler

    job_id = started_job(api)

    def crash(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise OverflowError("int too big to convert")

    monkeypatch.setattr(scheduler, "run_claimed", crash)
    me = SimpleNamespace(name="w-test", wake=lambda: None)
    scheduler.Scheduler._run(me, scheduling.Claim(job_id, [], 0), RunControl(None))
    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["failure_reason"] == "the worker's supervisor crashed: OverflowError: int too big to convert"
    lines = [r["line"] for r in api.get(f"/api/jobs/{job_id}/logs").json()]
    assert lines[0] == job["failure_reason"] and any("Traceback" in x for x in lines)
