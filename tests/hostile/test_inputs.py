"""Absurd input gets a 422 naming the field, never a 500 (both databases); resume once;
idempotent submission."""

from __future__ import annotations

import json

import pytest

from backend.db.models import JobStatus as S
from backend.db.session import session_scope
from backend.services import scheduling
from tests.backend.test_jobs_service import (
    ds,  # noqa: F401  # a registered demo dataset
    fake_checkpoint,
    force_status,
    submit,
)


def problems(r) -> dict[str, str]:
    assert r.status_code == 422, (r.status_code, r.text)
    return {e["field"]: e["message"] for e in r.json()["errors"]}


@pytest.mark.parametrize(("field", "value"), [
    ("max_steps", 10**12), ("max_steps", 2**63), ("seed", 2**40), ("seed", 2**70), ("seed", -1),
    ("max_seq_length", 10**9), ("weight_decay", 1e308), ("num_train_epochs", 1e9), ("logging_steps", 2**40),
    ("save_steps", 10**12), ("global_batch_size", 2**40), ("max_grad_norm", 1e300), ("nproc_per_node", 2**40),
    ("save_total_limit", 10**9), ("lora_alpha", 2**40), ("vision_select_layer", -(2**40)),
])
def test_each_absurd_hyperparameter_is_refused_by_name(api, ds, field, value):  # noqa: F811
    r = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1, "hyperparameters": {field: value}})
    assert field in problems(r), r.text
    assert api.get("/api/jobs").json() == []


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN"])
def test_infinity_and_nan_are_refused(api, ds, literal):  # noqa: F811
    body = f'{{"dataset_id": {ds}, "model_id": 1, "hyperparameters": {{"learning_rate": {literal}, ' \
           f'"weight_decay": {literal}}}}}'
    r = api.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert {"learning_rate", "weight_decay"} <= set(problems(r))


def test_a_cpu_job_cannot_ask_for_more_ranks_than_a_worker_has_cpus(api, ds):  # noqa: F811
    with session_scope() as s:
        scheduling.register_worker(s, "w1@node", "node", gpus=0, gpu_memory_mib=None, cpus=2)
    r = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1, "hyperparameters": {"nproc_per_node": 64}})
    assert "2 CPUs" in problems(r)["nproc_per_node"]
    assert submit(api, ds, hyperparameters={"nproc_per_node": 2, "max_steps": 1})["status"] == "queued"


@pytest.mark.parametrize("big", [2**31, 2**63, 10**30])
def test_ids_beyond_the_database_integer_are_422_on_every_route(api, big):
    """Every route of the OpenAPI schema with an integer in its path, with that integer too big."""
    seen = 0
    for path, ops in api.get("/openapi.json").json()["paths"].items():
        for method, op in ops.items():
            ints = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"
                    and p["schema"].get("type") == "integer"]
            if not ints:
                continue
            url = path
            for p in op["parameters"]:
                if p["in"] == "path":
                    url = url.replace("{" + p["name"] + "}", str(big) if p["name"] in ints else "x")
            r = api.request(method.upper(), url, json={})
            assert r.status_code == 422, (method, url, r.status_code, r.text)
            seen += 1
    assert seen > 20
    body = {"dataset_id": big, "model_id": big}
    assert {"body.dataset_id", "body.model_id"} <= set(problems(api.post("/api/jobs", json=body)))
    assert "query.limit" in problems(api.get("/api/jobs", params={"limit": big}))


def test_a_job_is_resumed_once(api, ds, tmp_path):  # noqa: F811
    job_id = submit(api, ds)["id"]
    fake_checkpoint(tmp_path / "run", 3)
    force_status(job_id, S.failed, run_dir=str(tmp_path / "run"))
    first = api.post(f"/api/jobs/{job_id}/resume")
    assert first.status_code == 201, first.text
    again = api.post(f"/api/jobs/{job_id}/resume")
    assert again.status_code == 409 and f"already resumed as job {first.json()['id']}" in again.json()["detail"]
    assert len(api.get("/api/jobs").json()) == 2
    assert api.post(f"/api/jobs/{job_id}/retry").status_code == 201  # from scratch stays possible


def test_the_database_refuses_a_second_resume_even_past_the_check(api, ds, tmp_path):  # noqa: F811
    """Two resumes racing past the service's check: the partial unique index keeps one."""
    from backend.services import jobs

    job_id = submit(api, ds)["id"]
    fake_checkpoint(tmp_path / "run", 3)
    force_status(job_id, S.failed, run_dir=str(tmp_path / "run"))
    with session_scope() as s:
        parent = jobs.get_job(s, job_id)
        jobs._follow_up(s, parent, tmp_path / "run" / "checkpoints" / "checkpoint-3", lambda _: None)
        with pytest.raises(jobs.Conflict, match="already resumed"):
            jobs._follow_up(s, parent, tmp_path / "run" / "checkpoints" / "checkpoint-3", lambda _: None)


def test_idempotency_key_gives_the_same_job(api, ds):  # noqa: F811
    body = {"dataset_id": ds, "model_id": 1, "hyperparameters": {"max_steps": 1}}
    key = {"Idempotency-Key": "submit-7f3a"}
    first = api.post("/api/jobs", json=body, headers=key)
    assert first.status_code == 201
    again = api.post("/api/jobs", json=body, headers=key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = api.post("/api/jobs", json={**body, "preset": "2b-full"}, headers=key)
    assert other.status_code == 409
    assert api.post("/api/jobs", json=body, headers={"Idempotency-Key": "another"}).status_code == 201
    assert len(api.get("/api/jobs").json()) == 2


def test_a_submission_past_its_deadline_records_nothing(api, ds, monkeypatch):  # noqa: F811
    from backend.settings import get_settings

    monkeypatch.setattr(get_settings(), "request_deadline_seconds", 1e-6)
    r = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1})
    assert r.status_code == 503 and "deadline" in r.json()["detail"] and r.headers["retry-after"]
    assert api.get("/api/jobs").json() == []


def test_json_of_floats_in_other_bodies(api, ds):  # noqa: F811
    body = json.dumps({"datasets": [{"dataset_id": ds, "repeat_time": 1}]}).replace("1}", "Infinity}")
    r = api.post("/api/meta", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
