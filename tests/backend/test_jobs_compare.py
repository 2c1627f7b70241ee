"""Run comparison (``GET /api/jobs/compare``) and the one ETA the list and the job view show."""

from __future__ import annotations

from datetime import datetime

import pytest

from backend.api.routes.jobs import _poll
from backend.db.models import Evaluation, JobStatus
from backend.db.session import session_scope
from backend.services import jobs
from tests.backend.test_jobs_service import ds, force_status, submit  # noqa: F401 (ds is a fixture)

S = JobStatus


def _metrics(job_id: int, rows: list[dict]) -> None:
    with session_scope() as s:
        jobs.append_metrics(s, job_id, 1, rows)


def test_compare_overlays_curves_lists_differences_and_scores(api, ds):  # noqa: F811
    a = submit(api, ds, hyperparameters={"learning_rate": 1e-4})["id"]
    b = submit(api, ds, hyperparameters={"learning_rate": 3e-4, "max_steps": 7})["id"]
    _metrics(a, [{"step": 1, "loss": 2.0, "learning_rate": 1e-4, "tokens_per_second": 50.0},
                 {"step": 2, "eval_loss": 1.5}])
    _metrics(b, [{"step": 1, "loss": 3.0, "learning_rate": 3e-4, "tokens_per_second": 40.0}])
    for j in (a, b):
        force_status(j, S.succeeded)
    with session_scope() as s:
        s.add(Evaluation(dataset_id=ds, split="train", status=S.succeeded, models=[
            {"label": "internvl-tiny-demo", "model_id": 1, "job_id": None},
            {"label": f"job {a}", "model_id": 1, "job_id": a}],
            summary=[{"label": "internvl-tiny-demo", "n": 2, "metrics": {"exact_match": 0.0}},
                     {"label": f"job {a}", "n": 2, "metrics": {"exact_match": 0.5}}]))
        s.add(Evaluation(dataset_id=None, split="validation", status=S.succeeded,  # on a mixture's held-out parts
                         mixture={"datasets": [{"name": "dots"}, {"name": "bars"}]},
                         models=[{"label": f"job {b}", "model_id": 1, "job_id": b}],
                         summary=[{"label": f"job {b}", "n": 5, "metrics": {"exact_match": 0.6}}]))
        s.add(Evaluation(dataset_id=None, split="validation", status=S.succeeded,  # a benchmark suite
                         benchmarks={"benchmarks": [{"name": "docvqa_val"}, {"name": "pope"}]},
                         models=[{"label": "internvl-tiny-demo", "model_id": 1, "job_id": None},
                                 {"label": f"job {b}", "model_id": 1, "job_id": b}],
                         summary=[{"label": "internvl-tiny-demo", "n": 5, "metrics": {}, "datasets": [
                                      {"name": "docvqa_val", "n": 3, "metrics": {"anls": 0.25}},
                                      {"name": "pope", "n": 2, "metrics": {"pope_f1": 0.5, "pope_accuracy": 0.5,
                                                                           "pope_recall": 1.0}}]},
                                  {"label": f"job {b}", "n": 3, "metrics": {}, "datasets": [
                                      {"name": "docvqa_val", "n": 3, "metrics": {"anls": 0.75}}]}]))
        s.commit()

    r = api.get("/api/jobs/compare", params=[("ids", a), ("ids", b)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert [j["id"] for j in body["jobs"]] == [a, b]
    assert body["series"][str(a)] == [
        {"step": 1, "loss": 2.0, "learning_rate": 1e-4, "tokens_per_second": 50.0}, {"step": 2, "eval_loss": 1.5}]
    assert body["series"][str(b)][0]["loss"] == 3.0
    differing = {d["field"]: d["values"] for d in body["differing"]}
    assert set(differing) == {"learning_rate", "max_steps"}, differing
    assert differing["learning_rate"] == [1e-4, 3e-4] and differing["max_steps"][1] == 7
    [ev, mixed, suite] = body["evaluations"]
    assert suite["benchmarks"] == ["docvqa_val", "pope"]  # its figures, per benchmark (as its one table)
    assert [m["metrics"] for m in suite["models"]] == [
        {"docvqa_val · anls": 0.25, "pope · pope_f1": 0.5, "pope · pope_accuracy": 0.5}, {"docvqa_val · anls": 0.75}]
    assert [(m["label"], m["metrics"]["exact_match"]) for m in ev["models"]] == [
        ("internvl-tiny-demo", 0.0), (f"job {a}", 0.5)]
    assert ev["mixture"] is None and (mixed["dataset_id"], mixed["mixture"]) == (None, ["dots", "bars"])


@pytest.mark.parametrize("ids", [[], [1], [1, 1]])
def test_compare_needs_two_distinct_jobs(api, ds, ids):  # noqa: F811
    submit(api, ds)
    r = api.get("/api/jobs/compare", params=[("ids", i) for i in ids])
    assert r.status_code == 422, r.text


def test_list_and_job_show_the_trainers_eta(api, ds):  # noqa: F811
    job = submit(api, ds)["id"]
    force_status(job, S.running)
    assert api.get(f"/api/jobs/{job}").json()["eta_seconds"] is None  # no step yet: start-up is not training
    _metrics(job, [{"step": 1, "loss": 2.0, "eta_seconds": 900.0}, {"step": 1, "eval_loss": 1.0}])
    listed = next(j for j in api.get("/api/jobs").json() if j["id"] == job)["eta_seconds"]
    single = api.get(f"/api/jobs/{job}").json()["eta_seconds"]
    assert 880 < listed <= 900 and 880 < single <= 900 and abs(listed - single) < 5
    # one finish instant for every viewer (issue 25: two tabs showed different ETAs), in the
    # list, the job and the event stream alike
    at = api.get(f"/api/jobs/{job}").json()["eta_at"]
    assert at and next(j for j in api.get("/api/jobs").json() if j["id"] == job)["eta_at"] == at
    status, _ = _poll(job, [0, 0])  # the event stream's `status` payload
    assert datetime.fromisoformat(status["eta_at"]) == datetime.fromisoformat(at.replace("Z", "+00:00"))
    force_status(job, S.succeeded)
    assert api.get(f"/api/jobs/{job}").json()["eta_seconds"] is None


def test_a_started_job_says_what_it_is_doing_and_since_when(api, ds):  # noqa: F811
    """Issue 25: a first job sat at 'Running 0/?' for minutes. The API gives the log's last
    'phase:' line with its time while no step is logged, for the list and the job alike."""
    from datetime import UTC, datetime

    job = submit(api, ds)["id"]
    force_status(job, S.running)
    assert api.get(f"/api/jobs/{job}").json()["phase"] is None  # nothing said yet
    with session_scope() as s:
        jobs.append_logs(s, job, 1, ["phase: preparing data (reading, checking and tokenizing the annotations)",
                                     "dataset demo: 4 samples", "phase: loading the model", "trainable: ..."])
    one = api.get(f"/api/jobs/{job}").json()
    listed = next(j for j in api.get("/api/jobs").json() if j["id"] == job)
    assert one["phase"] == listed["phase"] == "loading the model"
    since = datetime.fromisoformat(one["phase_since"].replace("Z", "+00:00"))
    assert since == datetime.fromisoformat(listed["phase_since"].replace("Z", "+00:00"))
    assert 0 <= (datetime.now(UTC) - since).total_seconds() < 60
    _metrics(job, [{"step": 1, "loss": 2.0, "eta_seconds": 9.0}])
    with session_scope() as s:
        s.get(jobs.Job, job).step = 1
        s.commit()
    assert api.get(f"/api/jobs/{job}").json()["phase"] is None  # the step lines take over


def test_the_built_in_model_has_its_sizes_and_a_memory_estimate(api, ds):  # noqa: F811
    demo = api.get("/api/models").json()[0]
    assert demo["builtin"] and demo["info"]["num_parameters"] == 785_344
    body = {"dataset_id": ds, "model_id": demo["id"], "preset": "demo"}
    cpu = api.post("/api/jobs/estimate", json=body).json()
    assert cpu["estimate"] is None and "CPUs" in cpu["reason"] and "info.arch" not in cpu["reason"]
    gpu = api.post("/api/jobs/estimate", json={**body, "hyperparameters": {"gpus": 2}}).json()
    assert gpu["estimate"]["assumptions"]["total_params"] == 785_344


def test_compare_shows_the_mixture_of_each_job(api):
    """Issue 25: two mixture jobs read as 'dataset_id 2 vs 1'. The diff names each job's data
    (datasets, repeat_time, augment, tiling per part) and each shared part's differing settings."""
    from tests.backend.test_mixture_api import register
    from tests.backend.test_mixture_api import submit as submit_mixture

    colors, shapes = register(api, 4, "colors"), register(api, 4, "shapes-demo")
    mixes = [[{"dataset_id": colors["id"], "repeat_time": 2, "data_augment": True},
              {"dataset_id": shapes["id"], "repeat_time": 0.5}],
             [{"dataset_id": shapes["id"], "repeat_time": 0.5, "max_dynamic_patch": 2},
              {"dataset_id": colors["id"]}],
             [{"dataset_id": colors["id"]}]]
    ids = []
    for m in mixes:
        r = submit_mixture(api, {"datasets": m})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    body = api.get("/api/jobs/compare", params=[("ids", i) for i in ids]).json()
    differing = {d["field"]: d["values"] for d in body["differing"]}
    assert differing == {
        "data": ["colors x2 (augment) + shapes-demo x0.5", "shapes-demo x0.5 (max_dynamic_patch 2) + colors x1",
                 "colors x1"],
        "data.colors.repeat_time": [2, 1, 1], "data.colors.data_augment": [True, False, False],
    }, differing  # shapes-demo is not in the third job: no per-part row for it (the data row says so)
    two = api.get("/api/jobs/compare", params=[("ids", ids[0]), ("ids", ids[1])]).json()
    differing = {d["field"]: d["values"] for d in two["differing"]}
    assert differing == {
        "data": ["colors x2 (augment) + shapes-demo x0.5", "shapes-demo x0.5 (max_dynamic_patch 2) + colors x1"],
        "data.colors.repeat_time": [2, 1], "data.colors.data_augment": [True, False],
        "data.shapes-demo.max_dynamic_patch": [None, 2]}, differing
    same = api.get("/api/jobs/compare", params=[("ids", ids[2]), ("ids", submit_mixture(
        api, {"datasets": mixes[2]}).json()["id"])]).json()
    assert same["differing"] == []  # the same data: no row, and never 'dataset_id'
