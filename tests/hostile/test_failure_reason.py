"""A failed trainer's reason names its first real error, found 40+ lines before the end of
its log (where torchrun's banner is), through the worker's real supervision path."""

from __future__ import annotations

from tests.backend.test_jobs_supervision import script, started_job
from worker.launcher import RunControl, supervise

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
