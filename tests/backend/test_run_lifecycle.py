"""One run lifecycle (issue 24): an evaluation is claimed, supervised and recorded as a training
job is (backend/services/runs.py), so the two places where their copies had drifted apart now
behave as the jobs do."""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace

from sqlalchemy import select, update

from backend.core.clock import now
from backend.db.models import Evaluation, GpuLease, JobStatus
from backend.db.session import session_scope
from backend.services import runs, scheduling
from backend.settings import get_settings
from worker import scheduler
from worker.supervision import RunControl

CRASH = "the worker's supervisor crashed: OverflowError: int too big to convert"


def queued_evaluation(api) -> int:
    model = api.get("/api/models").json()[0]
    ds = api.post("/api/datasets/demo", params={"samples": 8, "val_fraction": 0.5}).json()
    r = api.post("/api/evaluations", json={"dataset_id": ds["id"], "models": [{"model_id": model["id"]}]})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_an_evaluation_whose_supervisor_crashes_is_recorded_with_the_crash(api, monkeypatch):
    """As a job's (tests/hostile/test_failure_reason.py): failed with the crash's reason and its
    traceback in the log, not failed minutes later as "worker killed" by the recovery sweep."""
    ev_id = queued_evaluation(api)
    with session_scope() as s:
        claim = scheduling.claim_next(s, "w-test", "node-t", 0, 0, 1)
    assert (claim.kind, claim.run_id) == ("evaluation", ev_id)

    def crash(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise OverflowError("int too big to convert")

    monkeypatch.setattr(scheduler, "run_evaluation", crash)
    me = SimpleNamespace(name="w-test", wake=lambda: None)
    scheduler.Scheduler._run(me, claim, RunControl(None))
    ev = api.get(f"/api/evaluations/{ev_id}").json()
    assert (ev["status"], ev["failure_reason"]) == ("failed", CRASH)
    lines = [r["line"] for r in api.get(f"/api/evaluations/{ev_id}/logs").json()]
    assert lines[0] == CRASH and any("Traceback" in x for x in lines)
    with session_scope() as s:  # its heartbeat goes stale: the sweep leaves the reason alone
        s.execute(update(Evaluation).where(Evaluation.id == ev_id).values(heartbeat_at=now() - timedelta(hours=1)))
        s.commit()
        assert runs.recover_lost(s, runs.EVALUATION, 60) == []
    assert api.get(f"/api/evaluations/{ev_id}").json()["failure_reason"] == CRASH


def test_an_evaluation_waiting_for_a_gpu_holds_no_worker_slot(api, monkeypatch):
    """The Celery task only wakes the scheduler (it used to claim the evaluation and wait for a
    GPU inside the task, holding one of the worker's slots); the evaluation waits queued in its
    table and the scheduler claims it, with a lease, once a GPU is free."""
    from worker import eval_tasks

    settings = get_settings().model_copy(update={"gpus_per_node": 1, "node_name": "node-t"})
    sched = scheduler.Scheduler("w-test", settings)
    with session_scope() as s:
        scheduling.register_worker(s, "w-test", "node-t", 1, None)
        assert scheduling.lease_for_holder(s, "node-t", "serve:other", 1) == [0]  # the only GPU is busy
    ev_id = queued_evaluation(api)
    monkeypatch.setattr(eval_tasks, "get_scheduler", lambda _name: sched)
    task = threading.Thread(target=lambda: eval_tasks.evaluate.apply(args=[ev_id]), daemon=True)
    task.start()
    task.join(10)
    assert not task.is_alive(), "the evaluation task waits for a GPU inside the worker slot"
    sched._claim_all()
    assert sched.runs == {} and api.get(f"/api/evaluations/{ev_id}").json()["status"] == "queued"

    started = []
    monkeypatch.setattr(scheduler, "run_evaluation", lambda run_id, control: started.append((run_id, control.gpu_ids)))
    with session_scope() as s:
        scheduling.release_holder(s, "serve:other")
    sched._claim_all()
    for t, _, _ in list(sched.runs.values()):
        t.join(10)
    assert started == [(ev_id, [0])]
    assert api.get(f"/api/evaluations/{ev_id}").json()["status"] == "starting"
    with session_scope() as s:
        assert s.scalars(select(GpuLease.evaluation_id).where(GpuLease.node == "node-t")).all() == [ev_id]
        runs.transition(s, runs.EVALUATION, ev_id, JobStatus.failed, failure_reason="test")  # gives the GPU back
        assert s.scalars(select(GpuLease).where(GpuLease.node == "node-t")).all() == []


def test_a_cpu_job_and_an_evaluation_take_slots_of_their_own(api):
    """On a node without GPUs (or a cluster), training jobs fill the CPU job slots and
    evaluations their own (the worker's concurrency, in which they ran before), so a training
    job never waits for an evaluation, nor the reverse; in submission order within each."""
    ev_id = queued_evaluation(api)
    ds_id = api.get(f"/api/evaluations/{ev_id}").json()["dataset_id"]
    jobs = []
    for _ in range(2):
        r = api.post("/api/jobs", json={"dataset_id": ds_id, "model_id": 1, "preset": "demo"})
        assert r.status_code == 201, r.text
        jobs.append(r.json()["id"])
    second_ev = queued_evaluation(api)
    slots = {"job": 1, "evaluation": 1}
    with session_scope() as s:
        first = scheduling.claim_next(s, "w", "n", 0, {"job": 0, "evaluation": 0}, slots)
        assert (first.kind, first.run_id) == ("evaluation", ev_id)  # submitted first
        job = scheduling.claim_next(s, "w", "n", 0, {"job": 0, "evaluation": 1}, slots)
        assert (job.kind, job.run_id) == ("job", jobs[0])  # beside the evaluation
        assert scheduling.claim_next(s, "w", "n", 0, {"job": 1, "evaluation": 1}, slots) is None
        again = scheduling.claim_next(s, "w", "n", None, {"job": 1, "evaluation": 0}, slots)  # a cluster
        assert (again.kind, again.run_id) == ("evaluation", second_ev)


def test_the_reaper_finds_every_kind_by_the_folder_its_descriptor_names(api, monkeypatch):
    """The reaper keeps no folder-to-table map of its own (it had one, which a new kind of run
    would have missed): a kind registered in runs.ALL_KINDS is found by its run folder and reaped
    once its row is finished."""
    import dataclasses

    from worker import processes, reaper

    other = dataclasses.replace(runs.EVALUATION, name="other",
                                program=dataclasses.replace(runs.EVALUATION.program, folder="others"))
    monkeypatch.setitem(runs.ALL_KINDS, "other", other)
    ev_id = queued_evaluation(api)
    data = get_settings().data_path.resolve()
    proc = processes.Proc(pid=4242, ppid=1, pgid=4242, argv=("python", "--spec", str(data / "others" / str(ev_id)
                                                                                     / "spec.json")))
    assert reaper.run_of(proc, data) == ("others", ev_id)
    assert reaper.run_of(dataclasses.replace(proc, argv=("python", "--spec", str(data / "nope" / "1" / "spec.json"))),
                         data) is None
    monkeypatch.setattr(processes, "all_processes", lambda: [proc])
    monkeypatch.setattr(processes, "launched_by_worker", lambda _p: True)
    r = reaper.Reaper(get_settings())
    assert r.orphans() == {}  # queued: not an orphan
    with session_scope() as s:
        runs.transition(s, other, ev_id, JobStatus.cancelled, failure_reason="test")
    assert r.orphans() == {("others", ev_id): [proc]}
