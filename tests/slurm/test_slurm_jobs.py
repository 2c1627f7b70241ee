"""Studio jobs with the Slurm backend against a real Slurm (``.ci/slurm-setup.sh``): the tiny model
with 2 processes through sbatch + srun, cancel with a checkpoint, resume, a failure inside the
trainer, and two nodes in network namespaces."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from backend.core.demo_data import write_zip

pytestmark = pytest.mark.slow

STEPS = 4


def upload_demo(studio, tmp_path: Path) -> tuple[int, int]:
    api = studio.api
    demo = next(m for m in api.get("/models").json() if m["builtin"])
    zpath = write_zip(tmp_path / "shapes.zip", n=16)
    with open(zpath, "rb") as f:
        r = api.post("/datasets", files={"file": ("shapes.zip", f, "application/zip")})
    assert r.status_code == 201, r.text
    return r.json()["id"], demo["id"]


def submit(studio, dataset_id: int, model_id: int, **hyper) -> int:
    body = {
        "dataset_id": dataset_id,
        "model_id": model_id,
        "preset": "demo",
        "hyperparameters": {
            "max_steps": STEPS,
            "nproc_per_node": 2,
            "zero_stage": 2,
            "per_device_batch_size": 2,
            "learning_rate": 1e-3,
            **hyper,
        },
    }
    r = studio.api.post("/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def log_lines(studio, job_id: int) -> list[str]:
    rows = studio.api.get(f"/jobs/{job_id}/logs", params={"after": 0, "limit": 10000}).json()
    return [row["line"] for row in rows]


def slurm_job_id(lines: list[str]) -> str:
    ids = [line.split()[-1] for line in lines if line.startswith("slurm: submitted batch job ")]
    assert len(ids) == 1, lines[:40]
    return ids[0]


def watch(studio, job_id: int, until, timeout: float = 600) -> dict:
    """Poll the job until ``until(job, metrics)`` holds; fail with the worker's log otherwise."""
    deadline = time.monotonic() + timeout
    with studio.api as api:
        while time.monotonic() < deadline:
            job = api.get(f"/jobs/{job_id}").json()
            metrics = api.get(f"/jobs/{job_id}/metrics").json()
            if until(job, metrics):
                return {"job": job, "metrics": metrics}
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
    raise AssertionError(f"job {job_id} never reached the expected state: {job}\n{studio.worker_log()}")


def scontrol_state(slurm_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", slurm_id], capture_output=True, text=True, check=True
    )
    return dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)


def test_job_runs_through_sbatch_and_srun(slurm_studio, tmp_path):
    ds, model = upload_demo(slurm_studio, tmp_path)
    job_id = submit(slurm_studio, ds, model)

    # Metrics stream into the studio while Slurm still runs the job.
    live = watch(slurm_studio, job_id, lambda job, m: job["status"] == "running" and len(m) >= 1)
    assert live["metrics"][0]["step"] == 1
    final = slurm_studio.wait_job(job_id)
    assert final["status"] == "succeeded", (final, slurm_studio.worker_log())

    lines = log_lines(slurm_studio, job_id)
    sid = slurm_job_id(lines)
    run_dir = Path(final["run_dir"])
    assert (run_dir / "slurm_job_id").read_text().strip() == sid
    script = (run_dir / "job.sbatch").read_text()
    # The studio shows the script it submitted, line by line, as it is in the run folder.
    assert [x[len("slurm| ") :] for x in lines if x.startswith("slurm| ")] == script.splitlines()
    assert "srun " in script and "--rdzv_backend c10d" in script and "--partition=debug" in script
    # ... and as files of the run folder, through the API like any other.
    api = slurm_studio.api
    assert {"job.sbatch", "slurm_job_id"} <= set(api.get(f"/jobs/{job_id}").json()["run_files"])
    assert api.get(f"/jobs/{job_id}/files/job.sbatch").text == script
    assert api.get(f"/jobs/{job_id}/files/slurm_job_id").text.strip() == sid
    assert any(x.startswith(f"slurm: job {sid} ended COMPLETED") for x in lines), lines[-10:]
    assert any("world size 2" in x for x in lines), "the trainer did not run 2 processes"
    for step in range(1, STEPS + 1):
        assert any(x.startswith(f"step {step}/{STEPS} | loss ") for x in lines), (
            f"no log line for step {step}"
        )
    assert [m["step"] for m in slurm_studio.api.get(f"/jobs/{job_id}/metrics").json()] == list(
        range(1, STEPS + 1)
    )
    assert (run_dir / "final" / "config.json").exists()

    # Slurm itself agrees: the batch job completed with exit code 0 and wrote the studio's log.
    st = scontrol_state(sid)
    assert st["JobState"] == "COMPLETED" and st["ExitCode"] == "0:0" and st["Partition"] == "debug"
    assert Path(st["StdOut"]) == run_dir / "training_log.txt"


def wait_evaluation(api, ev_id: int, until, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while not until(ev := api.get(f"/evaluations/{ev_id}").json()):
        assert time.monotonic() < deadline and ev["status"] not in ("succeeded", "failed", "cancelled"), ev
        time.sleep(0.5)
    return ev


def test_cancel_saves_checkpoint_then_resume_finishes(slurm_studio, tmp_path):
    """Cancel of a training job (checkpoint, then resume to the end) and, meanwhile, of an
    evaluation running on Slurm (its Slurm job ends, nothing of it runs on)."""
    ds, model = upload_demo(slurm_studio, tmp_path)
    api = slurm_studio.api
    r = api.post("/evaluations", json={"dataset_id": ds, "split": "train", "models": [{"model_id": model}],
                                       "metrics": ["exact_match"], "params": {"batch_size": 1, "max_new_tokens": 48}})
    assert r.status_code == 201, r.text
    ev_id = r.json()["id"]
    job_id = submit(slurm_studio, ds, model, max_steps=12)
    wait_evaluation(api, ev_id, lambda ev: ev["done"] >= 1)
    assert api.post(f"/evaluations/{ev_id}/cancel").status_code == 200
    ev = wait_evaluation(api, ev_id, lambda ev: ev["status"] in ("succeeded", "failed", "cancelled"))
    assert ev["status"] == "cancelled" and ev["done"] < 16, ev
    ev_lines = [row["line"] for row in api.get(f"/evaluations/{ev_id}/logs", params={"limit": 10000}).json()]
    ev_sid = slurm_job_id(ev_lines)
    assert any(x.startswith(f"slurm: asked job {ev_sid} to stop (scancel --signal=TERM)") for x in ev_lines)
    assert scontrol_state(ev_sid)["JobState"] in ("CANCELLED", "FAILED", "COMPLETED"), "the evaluation runs on"
    watch(slurm_studio, job_id, lambda job, m: len(m) >= 2)
    assert slurm_studio.api.post(f"/jobs/{job_id}/cancel").status_code == 200
    final = slurm_studio.wait_job(job_id)
    assert final["status"] == "cancelled", (final, slurm_studio.worker_log())

    lines = log_lines(slurm_studio, job_id)
    sid = slurm_job_id(lines)
    assert any(x.startswith(f"slurm: asked job {sid} to stop (scancel --signal=TERM)") for x in lines)
    assert any("stopped on request; checkpoint saved" in x for x in lines), lines[-30:]
    assert not any("killed after the grace period" in x for x in lines)
    checkpoints = sorted((Path(final["run_dir"]) / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and (checkpoints[-1] / "trainer_state.json").exists()
    stopped_at = int(checkpoints[-1].name.split("-")[-1])
    assert 2 <= stopped_at < 12

    r = slurm_studio.api.post(f"/jobs/{job_id}/resume")
    assert r.status_code in (200, 201), r.text
    child = slurm_studio.wait_job(r.json()["id"])
    assert child["status"] == "succeeded", (child, slurm_studio.worker_log())
    steps = [m["step"] for m in slurm_studio.api.get(f"/jobs/{child['id']}/metrics").json()]
    assert steps == list(range(stopped_at + 1, 13)), steps
    assert slurm_job_id(log_lines(slurm_studio, child["id"])) != sid


def test_failure_inside_trainer_fails_the_job_with_the_reason(slurm_studio, tmp_path):
    ds, model = upload_demo(slurm_studio, tmp_path)
    # The dataset changes on the shared filesystem after registration: the trainer cannot parse it.
    annotation = next((slurm_studio.data_dir / "datasets" / str(ds)).rglob("*.jsonl"))
    annotation.write_text("this is not JSON\n")
    job_id = submit(slurm_studio, ds, model)
    final = slurm_studio.wait_job(job_id)
    assert final["status"] == "failed", final
    assert final["exit_code"] not in (0, None)
    sid = slurm_job_id(log_lines(slurm_studio, job_id))
    reason = final["failure_reason"]
    # The reason names the trainer's own error, not only torchrun's and srun's summaries.
    assert f"slurm: job {sid} ended FAILED" in reason, reason
    cause = reason.split("first error in the log: ", 1)[-1]
    assert cause != reason and "json" in cause.lower(), reason
    assert scontrol_state(sid)["JobState"] == "FAILED"


def test_two_nodes_train_across_network_namespaces(twonode_studio, tmp_path):
    ds, model = upload_demo(twonode_studio, tmp_path)
    job_id = submit(twonode_studio, ds, model, nnodes=2, nproc_per_node=1)
    final = twonode_studio.wait_job(job_id)
    assert final["status"] == "succeeded", (final, twonode_studio.worker_log())
    lines = log_lines(twonode_studio, job_id)
    sid = slurm_job_id(lines)
    # Two slurmd "hosts", each with its own address; the rendezvous is on the first one.
    assert any(x.startswith(f"slurm: job {sid} on vn[1-2], rendezvous vn1:") for x in lines), lines[:60]
    assert any("world size 2" in x for x in lines)
    st = scontrol_state(sid)
    assert st["NodeList"] == "vn[1-2]" and st["NumNodes"] == "2" and st["JobState"] == "COMPLETED"
    script = (Path(final["run_dir"]) / "job.sbatch").read_text()
    assert "--nodes=2" in script and "--nnodes 2 --nproc_per_node 1" in script


def squeue_field(slurm_id: str, field: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", slurm_id, "-o", field], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_node_failure_requeues_and_resumes_from_the_last_checkpoint(twonode_studio, tmp_path):
    ds, model = upload_demo(twonode_studio, tmp_path)
    job_id = submit(twonode_studio, ds, model, max_steps=10, save_steps=2)
    running = watch(twonode_studio, job_id, lambda job, m: len(m) >= 3)
    sid = slurm_job_id(log_lines(twonode_studio, job_id))
    node = squeue_field(sid, "%N")
    assert node in ("vn1", "vn2")
    other = "vn2" if node == "vn1" else "vn1"
    try:
        # The node "fails" (and stays down): Slurm kills the job there and, as it was submitted with
        # --requeue, queues it again; it restarts on the other node.
        subprocess.run(
            ["scontrol", "update", f"nodename={node}", "state=down", "reason=vlstudio-test"], check=True
        )
        deadline = time.monotonic() + 60
        while squeue_field(sid, "%T") != "PENDING":
            assert time.monotonic() < deadline, squeue_field(sid, "%T %r")
            time.sleep(0.5)
        # Slurm holds a requeued job for a while (BeginTime); start it now rather than wait in a test.
        subprocess.run(["scontrol", "update", f"jobid={sid}", "starttime=now"], check=True)
        final = twonode_studio.wait_job(job_id, timeout=300)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
    assert final["status"] == "succeeded", (final, twonode_studio.worker_log())
    assert running["job"]["id"] == final["id"]  # the same studio job throughout

    lines = log_lines(twonode_studio, job_id)
    assert any(x.startswith(f"slurm: job {sid} was requeued by Slurm") for x in lines), lines[-40:]
    assert any(x.startswith("slurm: requeued (restart 1), training from ") for x in lines)
    assert any(x.startswith(f"slurm: job {sid} RUNNING on {other}") for x in lines), lines[-40:]
    # The second run resumed from the newest checkpoint: one saved every 2 steps, or the one the
    # trainer saves when Slurm's SIGTERM reaches it as the node goes down (any step).
    resumed = json.loads((Path(final["run_dir"]) / "spec.requeue.json").read_text())["resume_from_checkpoint"]
    k = int(resumed.rsplit("-", 1)[-1])
    assert k >= 2
    steps = [m["step"] for m in twonode_studio.api.get(f"/jobs/{job_id}/metrics").json()]
    assert steps[-(10 - k) :] == list(range(k + 1, 11)) and set(steps) == set(range(1, 11)), steps


def test_time_limit_stops_with_a_checkpoint(slurm_studio, tmp_path):
    ds, model = upload_demo(slurm_studio, tmp_path)
    job_id = submit(slurm_studio, ds, model, max_steps=200)
    watch(slurm_studio, job_id, lambda job, m: len(m) >= 2)
    sid = slurm_job_id(log_lines(slurm_studio, job_id))
    # What Slurm sends SLURM_SIGNAL_SECONDS before the time limit (--signal=B:USR1@N), sent now
    # rather than after minutes: Slurm times that signal only to within a minute.
    subprocess.run(["scancel", "--batch", "--signal=USR1", sid], check=True)
    final = slurm_studio.wait_job(job_id, timeout=300)
    assert final["status"] == "failed" and final["exit_code"] == 124, final
    assert (
        "stopped with a checkpoint before the time limit; resume the job to continue"
        in final["failure_reason"]
    )
    lines = log_lines(slurm_studio, job_id)
    assert any(x.startswith("slurm: the time limit is near: the trainer saves a checkpoint") for x in lines)
    assert any("stopped on request; checkpoint saved" in x for x in lines), lines[-30:]
    checkpoints = list((Path(final["run_dir"]) / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    assert len(checkpoints) == 1


def test_a_restarted_worker_reattaches_to_its_slurm_job_and_never_submits_twice(slurm_studio, tmp_path):
    """kill -9 of the worker while Slurm runs a training job and an evaluation: both Slurm jobs
    run on; the restarted worker follows them again through the one supervisor (no second
    sbatch, not even with requeue_on_failure) to their end, with the whole log (the command line
    once), every metric and every evaluated sample once."""
    import os
    import signal

    from tests.conftest import start_worker

    ds, model = upload_demo(slurm_studio, tmp_path)
    api = slurm_studio.api
    r = api.post("/evaluations", json={"dataset_id": ds, "split": "train", "models": [{"model_id": model}],
                                       "metrics": ["exact_match"], "params": {"batch_size": 1, "max_new_tokens": 48}})
    assert r.status_code == 201, r.text
    ev_id = r.json()["id"]
    body = {"dataset_id": ds, "model_id": model, "preset": "demo", "requeue_on_failure": True,
            "hyperparameters": {"max_steps": 10, "nproc_per_node": 2, "zero_stage": 2, "per_device_batch_size": 2,
                                "learning_rate": 1e-3}}
    r = api.post("/jobs", json=body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    watch(slurm_studio, job_id, lambda job, m: len(m) >= 2)
    ev = api.get(f"/evaluations/{ev_id}").json()
    assert ev["status"] == "running" and 1 <= ev["done"] < 16, ev  # mid-evaluation, on Slurm
    worker = slurm_studio.procs[1]
    name = next(a for a in worker.args if "@" in a).split("@")[0]
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(3)  # the Slurm job trains on, unsupervised
    slurm_studio.procs.append(start_worker(slurm_studio.env, slurm_studio.data_dir, name))
    final = slurm_studio.wait_job(job_id)
    assert final["status"] == "succeeded", (final, slurm_studio.worker_log())

    lines = log_lines(slurm_studio, job_id)
    sid = slurm_job_id(lines)  # exactly one "submitted batch job" line
    assert lines.count(f"slurm: worker reattached to batch job {sid}") == 1, lines[-40:]
    rows = slurm_studio.api.get(f"/jobs/{job_id}/logs", params={"after": 0, "limit": 10000}).json()
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    for step in range(1, 11):
        assert sum(x.startswith(f"step {step}/10 | loss ") for x in lines) == 1, f"step {step} not once"
    assert [m["step"] for m in slurm_studio.api.get(f"/jobs/{job_id}/metrics").json()] == list(range(1, 11))
    assert not [j for j in slurm_studio.api.get("/jobs").json() if j["parent_job_id"] == job_id]
    out = subprocess.run(["sacct", "-n", "-X", "-P", "--name", f"vlstudio-job-{job_id}", "-o", "JobID"],
                         capture_output=True, text=True)
    submitted = {x for x in out.stdout.split() if x}
    assert submitted <= {sid}, f"Slurm has more than one job for this run: {submitted}"
    assert sum(x.startswith("$ ") for x in lines) == 1, "the command line was logged again on reattach"

    ev = api.get(f"/evaluations/{ev_id}").json()
    deadline = time.monotonic() + 300
    while ev["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(1)
        ev = api.get(f"/evaluations/{ev_id}").json()
    assert ev["status"] == "succeeded", (ev, slurm_studio.worker_log())
    assert ev["done"] == ev["total"] == 16 and ev["summary"][0]["n"] == 16
    rows = api.get(f"/evaluations/{ev_id}/logs", params={"limit": 10000}).json()
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    ev_lines = [row["line"] for row in rows]
    ev_sid = slurm_job_id(ev_lines)
    assert ev_lines.count(f"slurm: worker reattached to batch job {ev_sid}") == 1, ev_lines[-40:]
    assert sum(x.startswith("$ ") for x in ev_lines) == 1
    written = (Path(ev["run_dir"]) / "evaluation_log.txt").read_text().splitlines()
    assert [row["line"] for row in rows if row["stream"] == "stdout"] == written  # no gap, no duplicate
    assert api.get(f"/evaluations/{ev_id}/results").json()["samples"] == 16
    out = subprocess.run(["sacct", "-n", "-X", "-P", "--name", f"vlstudio-eval-{ev_id}", "-o", "JobID"],
                         capture_output=True, text=True)
    assert {x for x in out.stdout.split() if x} <= {ev_sid}
