"""The worker's supervision of a launched command, with stand-in trainers (tiny Python
scripts) instead of torchrun: streaming, GPU environment, cancel escalation, failure reasons,
and GPU detection/sampling through a fake nvidia-smi."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from backend.db.models import JobStatus
from backend.db.session import session_scope
from backend.services import jobs
from backend.settings import get_settings
from tests.backend.test_api import demo_files, upload, zip_bytes
from worker import gpus
from worker.runtime import Launch
from worker.training.launch import RunControl, supervise

S = JobStatus


def started_job(api) -> int:
    ds = upload(api, zip_bytes(demo_files(2))).json()["id"]
    job_id = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1}).json()["id"]
    with session_scope() as s:
        assert jobs.claim_job(s, job_id, "test-worker")
    return job_id


def script(tmp_path: Path, body: str, gpu_ids: list[int] | None = None) -> Launch:
    """A launch of a stand-in program (a module in tmp_path) instead of the trainer."""
    (tmp_path / "fake_trainer.py").write_text(body)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    return Launch(name="test", module="fake_trainer", spec_path=run_dir / "spec.json", run_dir=run_dir,
                  log_path=run_dir / "training_log.txt", distributed=False,
                  gpu_ids=None if gpu_ids is None else tuple(gpu_ids),
                  env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})


def test_output_is_streamed_and_a_failure_keeps_code_reason_and_last_lines(api, tmp_path):
    job_id = started_job(api)
    launch = script(tmp_path, "import os, sys\nprint('devices', repr(os.environ['CUDA_VISIBLE_DEVICES']))\n"
                              "for i in range(30): print('line', i)\nsys.exit(3)\n", gpu_ids=[1, 3])
    assert supervise(job_id, launch, control=RunControl([1, 3])) == "failed"
    job = api.get(f"/api/jobs/{job_id}").json()
    assert (job["status"], job["exit_code"]) == ("failed", 3)
    assert job["failure_reason"].startswith("trainer exited with code 3; no checkpoint\n")
    assert job["failure_reason"].endswith("line 29") and "line 9\n" not in job["failure_reason"]
    lines = [r["line"] for r in api.get(f"/api/jobs/{job_id}/logs").json()]
    assert lines[1:-1] == ["devices '1,3'"] + [f"line {i}" for i in range(30)]
    assert lines[-1] == "job failed: trainer exited with code 3; no checkpoint"
    assert job["command"].endswith("-m fake_trainer --spec " + str(launch.spec_path))


def test_cancel_sends_sigterm_then_sigkill_after_the_grace_period(api, tmp_path, monkeypatch):
    monkeypatch.setenv("VLSTUDIO_CANCEL_GRACE_SECONDS", "2")
    get_settings.cache_clear()
    job_id = started_job(api)
    launch = script(tmp_path, "import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: print('got SIGTERM', "
                              "flush=True))\nprint('ready', flush=True)\nwhile True: time.sleep(0.1)\n")
    outcome: list[str] = []
    t = threading.Thread(target=lambda: outcome.append(supervise(job_id, launch)))
    t.start()
    log = launch.log_path
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (log.exists() and "ready" in log.read_text(errors="ignore")):
        time.sleep(0.1)
    asked = time.monotonic()
    assert api.post(f"/api/jobs/{job_id}/cancel").json()["status"] == "stopping"
    t.join(60)
    assert outcome == ["cancelled"] and time.monotonic() - asked >= 2
    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["exit_code"] == -9
    assert "killed after 2s grace" in job["failure_reason"]
    assert "got SIGTERM" in [r["line"] for r in api.get(f"/api/jobs/{job_id}/logs").json()]


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncase \"$1\" in\n  *utilization*) printf '0, 97, 30000, 81559\\n1, 12, 1000, 81559\\n';;\n"
                   "  *) printf '0, 81559\\n1, 81559\\n';;\nesac\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_gpus_are_detected_and_sampled_per_job(fake_smi, monkeypatch):
    monkeypatch.delenv("VLSTUDIO_GPUS_PER_NODE", raising=False)
    from backend.settings import Settings

    assert gpus.detect(Settings()) == (2, 81559)
    assert gpus.detect(Settings(gpus_per_node=4, gpu_memory_gib=24)) == (4, 24576)
    assert gpus.sample([0]) == {"gpu0_util_pct": 97.0, "gpu0_mem_used_mib": 30000.0, "gpu0_mem_total_mib": 81559.0}
