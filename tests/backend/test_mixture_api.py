"""A job's mixture through the API (issue 17): several registered datasets with their own
``repeat_time`` / ``data_augment`` / ``max_dynamic_patch``, a seed-style meta file on shared
storage, the resolved counts stored with the job, every problem named; and the dataset API
recognising a meta file. In-process API on SQLite and PostgreSQL (the migration on both)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.core.demo_data import write_folder
from tests.backend.test_api import demo_files, upload, zip_bytes


def register(api, n: int, name: str) -> dict:
    r = api.post("/api/datasets", files={"file": ("d.zip", zip_bytes(demo_files(n)), "application/zip")},
                 data={"name": name})
    assert r.status_code == 201, r.text
    return r.json()


def submit(api, mixture: dict | None = None, **body) -> object:
    return api.post("/api/jobs", json={"model_id": 1, "preset": "demo", **({"mixture": mixture} if mixture else {}),
                                       **body})


def test_two_datasets_with_fractional_and_integer_repeat(api):
    dots, bars = register(api, 10, "dots"), register(api, 6, "bars")
    r = submit(api, {"datasets": [{"dataset_id": dots["id"], "repeat_time": 2},
                                  {"dataset_id": bars["id"], "repeat_time": 0.5, "data_augment": True,
                                   "max_dynamic_patch": 2}]})
    assert r.status_code == 201, r.text
    job = r.json()
    mix = job["mixture"]
    rows = {row["name"]: row for row in mix["datasets"]}
    # the recipe's counts: 10 x 2 + int(6 x 0.5)
    assert (rows["dots"]["samples"], rows["bars"]["samples"], mix["samples"]) == (20, 3, 23)
    assert rows["bars"]["data_augment"] is True and rows["bars"]["max_dynamic_patch"] == 2
    assert rows["dots"]["dataset_id"] == dots["id"] and job["dataset_id"] == dots["id"]
    assert api.get(f"/api/jobs/{job['id']}").json()["mixture"] == mix  # stored, not recomputed


def test_dataset_id_is_the_one_dataset_mixture(api):
    ds = register(api, 4, "solo")
    job = submit(api, dataset_id=ds["id"]).json()
    (row,) = job["mixture"]["datasets"]
    assert (row["samples"], row["repeat_time"], row["data_augment"]) == (4, 1, False)
    retried = api.post(f"/api/jobs/{job['id']}/cancel")
    assert retried.status_code == 200
    child = api.post(f"/api/jobs/{job['id']}/retry").json()
    assert child["mixture"]["datasets"] == job["mixture"]["datasets"]


def test_mixture_problems_are_listed_with_their_field(api):
    ds = register(api, 4, "solo")
    r = submit(api, {"datasets": [{"dataset_id": ds["id"], "repeat_time": 2.5}, {"dataset_id": 999}]})
    assert r.status_code == 422
    assert any("whole number" in str(e) for e in r.json()["errors"]), r.json()
    r = submit(api, {"datasets": [{"dataset_id": ds["id"]}, {"dataset_id": 999}, {"dataset_id": ds["id"]}]})
    fields = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert "not found" in fields["mixture.datasets.1.dataset_id"] and "twice" in fields["mixture.datasets.2.name"]
    r = submit(api, {"datasets": []})
    assert r.status_code == 422 and "at least one" in r.text
    r = submit(api, {"datasets": [{"dataset_id": ds["id"]}]}, dataset_id=ds["id"])
    assert r.status_code == 422 and "not both" in r.text


def seed_meta(shared: Path) -> Path:
    """A meta file in the seed's layout: relative root and annotation, next to the data."""
    write_folder(shared / "data" / "dots", n=8)
    (shared / "meta").mkdir()
    meta = {"dots_train": {"root": "../data/dots", "annotation": "../data/dots/annotations.jsonl",
                           "data_augment": False, "repeat_time": 0.5, "length": 999}}
    (shared / "meta" / "mine.json").write_text(json.dumps(meta))
    return shared / "meta" / "mine.json"


@pytest.fixture
def shared(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "shared"
    root.mkdir()
    monkeypatch.setenv("VLSTUDIO_DATA_ROOTS", str(root))
    from backend.settings import get_settings

    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


def test_meta_file_on_shared_storage(api, shared):
    meta = seed_meta(shared)
    ds = register(api, 4, "mine")
    r = submit(api, {"datasets": [{"dataset_id": ds["id"], "repeat_time": 1}], "meta_path": str(meta)})
    assert r.status_code == 201, r.text
    rows = {row["name"]: row for row in r.json()["mixture"]["datasets"]}
    released = rows["dots_train"]
    # relative paths from the meta file's folder; the real line count, not the file's 'length'
    assert released["annotation"] == str((shared / "data" / "dots" / "annotations.jsonl").resolve())
    assert (released["lines"], released["samples"], released["source"]) == (8, 4, "meta_file")
    assert rows["mine"]["source"] == "dataset"

    meta.write_text(json.dumps({"gone": {"root": "../data/dots", "annotation": "../data/nope.jsonl"}}))
    r = submit(api, {"meta_path": str(meta)})
    assert r.status_code == 422
    (err,) = r.json()["errors"]
    assert err["field"] == "mixture.meta_path" and "gone" in err["message"]
    assert str(shared / "meta" / ".." / "data" / "nope.jsonl") in err["message"]
    r = submit(api, {"meta_path": str(shared.parent / "elsewhere.json")})
    assert r.status_code == 422 and "not under an allowed data folder" in r.text


def test_dataset_api_says_a_meta_file_is_a_mixture(api, shared):
    meta = seed_meta(shared)
    r = api.post("/api/datasets/from-path", json={"root": str(shared / "meta"), "annotation": str(meta)})
    assert r.status_code == 422
    assert "is a meta file" in r.json()["detail"] and "dots_train" in r.json()["detail"]
    assert "mixture" in r.json()["detail"]
    r = upload(api, meta.read_bytes(), "mine.json")
    assert r.status_code == 422 and "is a meta file" in r.json()["detail"], r.text
    r = api.post("/api/datasets", files={"files": ("mine.json", meta.read_bytes(), "application/json")})
    assert r.status_code == 422 and "is a meta file" in r.json()["detail"], r.text
    assert api.get("/api/datasets").json() == []  # nothing half-registered
