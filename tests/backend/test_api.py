"""The REST API against a real database (SQLite and PostgreSQL) and broker."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from backend.core.demo_data import generate
from backend.core.presets import PRESETS, resolve


def zip_bytes(files: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def demo_files(n: int = 4) -> dict[str, bytes | str]:
    samples = generate(n)
    files: dict[str, bytes | str] = {name: data for name, data, _ in samples}
    files["ann.jsonl"] = "".join(json.dumps(r) + "\n" for _, _, r in samples)
    return files


def upload(api, data: bytes, filename: str = "ds.zip"):
    return api.post("/api/datasets", files={"file": (filename, data, "application/zip")})


def data_dir_entries(api_settings_dir) -> list[str]:
    return sorted(p.name for p in api_settings_dir.iterdir())


def test_health_and_builtin_model(api):
    assert api.get("/api/health").json()["status"] == "ok"
    models = api.get("/api/models").json()
    assert [m["name"] for m in models] == ["internvl-tiny-demo"]
    assert models[0]["template"] == "internlm2-chat" and models[0]["builtin"] is True
    assert api.get("/openapi.json").status_code == 200


def test_upload_valid_zip_registers_dataset(api):
    r = upload(api, zip_bytes(demo_files(4)))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["num_samples"], ds["num_images"]) == (4, 4)
    assert api.get(f"/api/datasets/{ds['id']}").json()["id"] == ds["id"]
    assert api.get("/api/datasets/999").status_code == 404


@pytest.mark.parametrize("payload, message", [
    (b"", "empty file"),
    (b"this is not a zip", "not a zip archive"),
    (zip_bytes({"../evil.jsonl": "{}"}), "points outside the archive"),
    (zip_bytes({"images/a.png": b"x"}), "no .jsonl annotation"),
])
def test_bad_uploads_are_refused_and_leave_nothing(api, tmp_path, payload, message):
    r = upload(api, payload)
    assert r.status_code == 422
    assert message in r.json()["detail"]
    assert api.get("/api/datasets").json() == []
    datasets_dir = tmp_path / "data" / "datasets"
    assert list(datasets_dir.iterdir()) == []
    assert list((tmp_path / "data" / "uploads").iterdir()) == []


def test_bad_lines_are_reported_with_line_numbers(api, tmp_path):
    files = demo_files(3)
    lines = files["ann.jsonl"].splitlines()
    lines[1] = "{not json"
    rec = json.loads(lines[2])
    rec["image"] = "images/missing.png"
    lines[2] = json.dumps(rec)
    files["ann.jsonl"] = "\n".join(lines) + "\n"
    r = upload(api, zip_bytes(files))
    assert r.status_code == 422
    errors = r.json()["errors"]
    assert {(e["line"], e["file"]) for e in errors} == {(2, "ann.jsonl"), (3, "ann.jsonl")}
    assert any("missing.png" in e["message"] for e in errors)
    assert api.get("/api/datasets").json() == []
    assert list((tmp_path / "data" / "datasets").iterdir()) == []


def test_job_spec_problems_are_listed_at_once(api):
    r = api.post("/api/jobs", json={"dataset_id": 42, "model_id": 1, "preset": "demo",
                                    "hyperparameters": {"learning_rate": -1, "min_dynamic_patch": 9,
                                                        "max_dynamic_patch": 2}})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"learning_rate", "dataset_id"} <= fields
    r = api.post("/api/jobs", json={"dataset_id": 1, "model_id": 1, "preset": "nope"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "preset"
    r = api.post("/api/jobs", json={"dataset_id": 1, "model_id": 1, "hyperparameters": {"bogus": 1}})
    assert r.status_code == 422 and "bogus" in json.dumps(r.json()["errors"])


def test_queued_job_cancel_and_illegal_transitions(api):
    ds = upload(api, zip_bytes(demo_files(2))).json()
    job = api.post("/api/jobs", json={"dataset_id": ds["id"], "model_id": 1, "preset": "demo"}).json()
    assert job["status"] == "queued"
    assert api.get("/api/jobs").json()[0]["id"] == job["id"]
    r = api.post(f"/api/jobs/{job['id']}/cancel")
    assert r.json()["status"] == "cancelled"
    r = api.post(f"/api/jobs/{job['id']}/cancel")
    assert r.status_code == 409
    assert api.get(f"/api/jobs/{job['id']}/logs").json() == []

    from backend.db.models import JobStatus
    from backend.db.session import session_scope
    from backend.services import jobs
    from backend.services.errors import Conflict

    with session_scope() as s:
        assert jobs.claim_job(s, job["id"], "w") is False  # a cancelled job is never started
        with pytest.raises(Conflict):
            jobs.transition(s, job["id"], JobStatus.running)


def test_claim_is_exclusive(api):
    ds = upload(api, zip_bytes(demo_files(2))).json()
    job = api.post("/api/jobs", json={"dataset_id": ds["id"], "model_id": 1, "preset": "demo"}).json()
    from backend.db.session import session_scope
    from backend.services import jobs

    with session_scope() as s:
        assert jobs.claim_job(s, job["id"], "a") is True
        assert jobs.claim_job(s, job["id"], "b") is False  # e.g. a redelivered broker message


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates(name):
    h = resolve(name)
    assert h.gradient_accumulation_steps >= 1


def test_resolve_preset_derives_values_and_lists_problems(api):
    r = api.post("/api/presets/resolve", json={"preset": "2b-2nd-full", "hyperparameters": {"gpus": 4,
                                                                                          "nproc_per_node": 4}})
    assert r.status_code == 200, r.text
    d = r.json()["derived"]
    assert d["effective_global_batch_size"] == 128 and d["gradient_accumulation_steps"] == 8
    r = api.post("/api/presets/resolve", json={"preset": "demo", "hyperparameters": {
        "min_dynamic_patch": 9, "max_dynamic_patch": 2, "learning_rate": 0}})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"learning_rate"} <= fields
    assert api.post("/api/presets/resolve", json={"preset": "nope"}).status_code == 422


def test_what_a_preset_leaves_to_the_model_is_the_models_own_tiling(api):
    """The demo preset sets 2 tiles and leaves the rest of the tiling to the model: empty without
    one, the model card's with it, and a job records it resolved."""
    keys = ("max_dynamic_patch", "min_dynamic_patch", "use_thumbnail", "dynamic_image_size")
    assert [api.get("/api/presets").json()["defaults"][k] for k in keys] == [None] * 4
    alone = api.post("/api/presets/resolve", json={"preset": "demo"}).json()["hyperparameters"]
    assert [alone[k] for k in keys] == [2, None, None, None]
    demo = next(m for m in api.get("/api/models").json() if m["builtin"])
    body = {"preset": "demo", "model_id": demo["id"], "hyperparameters": {"max_seq_length": 1024}}
    with_model = api.post("/api/presets/resolve", json=body).json()["hyperparameters"]
    assert [with_model[k] for k in keys] == [2, 1, True, True]
    # 6 tiles + the model's thumbnail (1794 tokens) do not fit 1024
    r = api.post("/api/presets/resolve", json={**body, "hyperparameters": {"max_seq_length": 1024,
                                                                            "max_dynamic_patch": 6}})
    assert r.status_code == 422 and "max_seq_length" in {e["field"] for e in r.json()["errors"]}
    ds = upload(api, zip_bytes(demo_files(2))).json()
    job = api.post("/api/jobs", json={"dataset_id": ds["id"], "model_id": demo["id"], "preset": "demo"}).json()
    assert [job["hyper"][k] for k in keys] == [2, 1, True, True]


def test_jobs_and_evaluations_refuse_a_dataset_that_is_not_ready(api):
    ds = upload(api, zip_bytes(demo_files(2))).json()
    from sqlalchemy import update

    from backend.db.models import Dataset
    from backend.db.session import session_scope

    with session_scope() as s:
        s.execute(update(Dataset).where(Dataset.id == ds["id"]).values(status="validating"))
    r = api.post("/api/jobs", json={"dataset_id": ds["id"], "model_id": 1, "preset": "demo"})
    assert r.status_code == 422
    assert any(e["field"] == "dataset_id" and "validating" in e["message"] for e in r.json()["errors"])
    r = api.post("/api/evaluations", json={"dataset_id": ds["id"], "split": "train", "models": [{"model_id": 1}]})
    assert r.status_code == 422
    assert any(e["field"] == "dataset_id" and "validating" in e["message"] for e in r.json()["errors"])
