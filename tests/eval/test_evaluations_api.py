"""Evaluation jobs, the validation split and the playground through the REST API, against
SQLite and PostgreSQL (no worker runs here: queued evaluations stay queued)."""

from __future__ import annotations

import base64
import io
import json
import zipfile

from backend.core.demo_data import generate


def demo_zip(n: int) -> bytes:
    buf = io.BytesIO()
    samples = generate(n)
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, _ in samples:
            zf.writestr(name, data)
        zf.writestr("ann.jsonl", "".join(json.dumps(r) + "\n" for _, _, r in samples))
    return buf.getvalue()


def test_validation_split_by_fraction(api):
    r = api.post("/api/datasets/demo", params={"samples": 20, "val_fraction": 0.25})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["num_samples"], ds["num_val_samples"]) == (15, 5)


def test_validation_split_by_second_jsonl(api):
    samples = generate(6)
    val = "".join(json.dumps(r) + "\n" for _, _, r in samples[:2])
    r = api.post("/api/datasets", files={"file": ("d.zip", demo_zip(6), "application/zip"),
                                         "validation": ("val.jsonl", val.encode(), "application/jsonl")})
    assert r.status_code == 201, r.text
    assert (r.json()["num_samples"], r.json()["num_val_samples"]) == (6, 2)


def test_validation_split_errors_say_what(api):
    r = api.post("/api/datasets", files={"file": ("d.zip", demo_zip(4), "application/zip")},
                 data={"val_fraction": "0.01"})
    assert r.status_code == 422 and "leaves 0 for validation" in r.json()["detail"]
    bad = json.dumps({"id": 1, "image": "images/missing.png",
                      "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]})
    r = api.post("/api/datasets", files={"file": ("d.zip", demo_zip(4), "application/zip"),
                                         "validation": ("val.jsonl", bad.encode(), "application/jsonl")})
    assert r.status_code == 422 and "validation JSONL" in r.json()["detail"], r.text
    assert api.get("/api/datasets").json() == []


def test_create_list_cancel_evaluation(api):
    model = api.get("/api/models").json()[0]
    ds = api.post("/api/datasets/demo", params={"samples": 8, "val_fraction": 0.5}).json()
    body = {"dataset_id": ds["id"], "models": [{"model_id": model["id"]}], "metrics": ["exact_match"]}
    r = api.post("/api/evaluations", json=body)
    assert r.status_code == 201, r.text
    ev = r.json()
    assert ev["status"] == "queued" and ev["models"][0]["label"] == model["name"]
    assert ev["params"]["max_new_tokens"] == 32
    assert [e["id"] for e in api.get("/api/evaluations").json()] == [ev["id"]]
    res = api.get(f"/api/evaluations/{ev['id']}/results").json()
    assert res["models"] == [model["name"]] and res["items"] == []
    assert api.post(f"/api/evaluations/{ev['id']}/cancel").json()["status"] == "cancelled"
    assert api.post(f"/api/evaluations/{ev['id']}/cancel").status_code == 409
    events = api.get(f"/api/evaluations/{ev['id']}/events").text
    assert "event: status" in events and events.rstrip().splitlines()[-2] == "event: end"
    assert '"status": "cancelled"' in events.rstrip().splitlines()[-1]
    assert api.get("/api/evaluations/999").status_code == 404


def test_invalid_evaluation_lists_every_problem(api):
    ds = api.post("/api/datasets/demo", params={"samples": 4}).json()  # no validation split
    r = api.post("/api/evaluations", json={
        "dataset_id": ds["id"], "models": [{"model_id": 999}, {"job_id": 5}], "metrics": ["bleu"],
        "params": {"batch_size": 0, "beams": 2}})
    assert r.status_code == 422
    fields = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert "no validation split" in fields["split"]
    assert fields["models.0"] == "model 999 not found" and fields["models.1"] == "job 5 not found"
    assert "bleu" in fields["metrics"] and "beams" in fields["params"]
    assert fields["params.batch_size"] == "must be a positive integer"
    assert api.get("/api/evaluations").json() == []


def test_a_checkpoint_cut_mid_save_is_not_evaluated(api, tmp_path):
    from sqlalchemy import update

    from backend.core import checkpoints
    from backend.db.models import Job
    from backend.db.session import session_scope

    ds = api.post("/api/datasets/demo", params={"samples": 4}).json()
    job = api.post("/api/jobs", json={"dataset_id": ds["id"], "model_id": 1, "preset": "demo"}).json()
    run = tmp_path / "run"
    for step, sealed in ((2, True), (4, False)):  # checkpoint-4: the trainer was killed while writing it
        (run / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        if sealed:
            checkpoints.seal(run / "checkpoints" / f"checkpoint-{step}", step)
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job["id"]).values(run_dir=str(run)))
    body = {"dataset_id": ds["id"], "split": "train"}
    r = api.post("/api/evaluations", json={**body, "models": [{"job_id": job["id"], "checkpoint": "checkpoint-4"}]})
    assert r.status_code == 422 and "no complete checkpoint-4" in r.text, r.text
    r = api.post("/api/evaluations", json={**body, "models": [{"job_id": job["id"], "checkpoint": "checkpoint-2"}]})
    assert r.status_code == 201, r.text


def test_chat_rejects_bad_requests_before_loading_anything(api):
    model = api.get("/api/models").json()[0]
    url = f"/api/models/{model['id']}/chat"
    r = api.post(url, json={"messages": [{"role": "assistant", "content": "hi"}]})
    assert r.status_code == 422 and any("alternate" in e["message"] for e in r.json()["errors"])
    r = api.post(url, json={"messages": [{"role": "user", "content": "hi"}], "image": "not base64!"})
    assert r.status_code == 422 and "image: not valid base64" in r.json()["detail"]
    r = api.post(url, json={"messages": [{"role": "user", "content": "hi"}],
                            "image": base64.b64encode(b"plain text").decode()})
    assert r.status_code == 422 and "not a readable image" in r.json()["detail"]
    assert api.post("/api/models/999/chat", json={"messages": [{"role": "user", "content": "x"}]}).status_code == 404


def test_mixture_evaluation_takes_every_held_out_part_or_names_the_one_without(api):
    """A mixture evaluation (issue 17): a training job's mixture or registered datasets, each
    with its held-out part; refusals name the dataset and leave nothing registered."""
    model = api.get("/api/models").json()[0]
    dots = api.post("/api/datasets/demo", params={"samples": 10, "val_fraction": 0.2}).json()
    bars = api.post("/api/datasets/demo", params={"samples": 8, "val_fraction": 0.25}).json()
    bare = api.post("/api/datasets/demo", params={"samples": 4}).json()  # nothing held out
    job = api.post("/api/jobs", json={"model_id": model["id"], "preset": "demo", "mixture": {"datasets": [
        {"dataset_id": dots["id"], "name": "dots", "repeat_time": 2},
        {"dataset_id": bars["id"], "name": "bars", "repeat_time": 0.5, "max_dynamic_patch": 2}]}})
    assert job.status_code == 201, job.text

    r = api.post("/api/evaluations", json={"mixture": {"job_id": job.json()["id"]}, "models": [{"model_id": 1}]})
    assert r.status_code == 201, r.text
    ev = r.json()
    assert ev["dataset_id"] is None and ev["split"] == "validation"
    parts = ev["mixture"]["datasets"]
    assert [(p["name"], p["dataset_id"], p["lines"], p["max_dynamic_patch"]) for p in parts] == [
        ("dots", dots["id"], 2, None), ("bars", bars["id"], 2, 2)]
    assert all(p["annotation"].endswith("val_split.jsonl") for p in parts) and ev["mixture"]["lines"] == 4
    assert api.get(f"/api/evaluations/{ev['id']}").json()["mixture"] == ev["mixture"]  # stored as resolved

    r = api.post("/api/evaluations", json={"mixture": {"datasets": [
        {"dataset_id": dots["id"], "name": "d"}, {"dataset_id": bare["id"]}, {"dataset_id": 999},
        {"dataset_id": bars["id"], "name": "d"}]}, "split": "train", "models": [{"model_id": 1}]})
    assert r.status_code == 422
    fields = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert "no held-out part" in fields["mixture.datasets.1"] and "'shapes-demo'" in fields["mixture.datasets.1"]
    assert fields["mixture.datasets.2"] == "dataset 999 not found"
    assert "'d' is used twice" in fields["mixture.datasets.3"]
    assert "held-out parts" in fields["split"]
    r = api.post("/api/evaluations", json={"dataset_id": dots["id"], "mixture": {"job_id": job.json()["id"]},
                                           "models": [{"model_id": 1}]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "dataset_id"
    r = api.post("/api/evaluations", json={"mixture": {"job_id": 999}, "models": [{"model_id": 1}]})
    assert r.status_code == 422 and r.json()["errors"][0] == {"field": "mixture.job_id", "message": "job 999 not found"}
    assert [e["id"] for e in api.get("/api/evaluations").json()] == [ev["id"]]  # no refusal left a row


def test_a_mixtures_overall_score_weighs_every_sample_once():
    """The evaluation program's summary of a mixture (``worker/evaluation/run.py``): per dataset,
    and overall over all samples together (3/5 here, not the datasets' mean 7/12)."""
    from worker.evaluation.run import model_summary

    rows = [{"dataset": d, "scores": {"exact_match": s}} for d, s in
            (("dots", 1.0), ("dots", 1.0), ("dots", 0.0), ("bars", 1.0), ("bars", 0.0))]
    out = model_summary("base", rows, ["exact_match"], ["dots", "bars"])
    assert out["n"] == 5 and out["metrics"] == {"exact_match": 0.6}
    assert out["datasets"] == [{"name": "dots", "n": 3, "metrics": {"exact_match": 2 / 3}},
                               {"name": "bars", "n": 2, "metrics": {"exact_match": 0.5}}]
    assert "datasets" not in model_summary("base", rows, ["exact_match"], [""])  # one split: no parts


def test_benchmark_suite_is_recorded_as_registered_or_refused_naming_each_problem(api, tmp_path):
    """A suite (issue 23): registered benchmarks, each recorded with the settings it runs with;
    every problem of the request at once (unknown, unregistered, twice, what a suite may not set),
    nothing recorded; one source of data only."""
    from backend.core.benchmarks import CATALOG, register_benchmark
    from tests.eval.benchmark_layouts import write_docvqa, write_pope

    for name, write in (("docvqa_val", write_docvqa), ("pope", write_pope)):
        write(tmp_path / "shared" / name)
        register_benchmark(name, tmp_path / "shared" / name, tmp_path / "data" / "benchmarks")
    r = api.post("/api/evaluations", json={"benchmarks": ["pope", "docvqa_val"], "models": [{"model_id": 1}],
                                           "params": {"limit": 2, "max_dynamic_patch": 1}})
    assert r.status_code == 201, r.text
    ev = r.json()
    assert ev["dataset_id"] is None and ev["mixture"] is None and ev["metrics"] == []
    rows = ev["benchmarks"]["benchmarks"]
    assert [(b["name"], b["samples"], b["metrics"], b["max_num"], b["max_new_tokens"], b["min_new_tokens"],
             b["dynamic"]) for b in rows] == [("pope", 6, ["pope"], 6, 100, 1, True),
                                             ("docvqa_val", 3, ["anls"], 6, 100, 1, True)]
    assert rows[1]["title"] == CATALOG["docvqa_val"].title and rows[1]["annotation"].endswith("samples.jsonl")
    assert ev["benchmarks"]["lines"] == 9 and ev["samples_per_second"] is None
    assert api.get(f"/api/evaluations/{ev['id']}").json()["benchmarks"] == ev["benchmarks"]
    # no table before it has scores
    r = api.get(f"/api/evaluations/{ev['id']}/table")
    assert r.status_code == 409 and "queued" in r.json()["detail"], r.text

    r = api.post("/api/evaluations", json={"benchmarks": ["pope", "bleu_test", "mme", "pope"], "split": "train",
                                           "metrics": ["exact_match"], "params": {"max_new_tokens": 8},
                                           "models": [{"model_id": 1}]})
    assert r.status_code == 422
    fields = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert fields["benchmarks.1"].startswith("unknown benchmark 'bleu_test'; known: vqav2_val, ")
    assert fields["benchmarks.2"].startswith("benchmark 'mme' is not registered")
    assert fields["benchmarks.3"] == "benchmark 'pope' is named twice"
    assert "own samples" in fields["split"] and "own (official) metrics" in fields["metrics"]
    assert "own lengths" in fields["params.max_new_tokens"]
    assert "benchmarks.0" not in fields
    r = api.post("/api/evaluations", json={"benchmarks": [], "models": [{"model_id": 1}]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "benchmarks"
    ds = api.post("/api/datasets/demo", params={"samples": 4, "val_fraction": 0.5}).json()
    r = api.post("/api/evaluations", json={"dataset_id": ds["id"], "benchmarks": ["pope"], "models": [{"model_id": 1}]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "dataset_id"
    assert [e["id"] for e in api.get("/api/evaluations").json()] == [ev["id"]]  # no refusal left a row


def test_suite_table_and_its_exports_from_a_finished_evaluation(api, tmp_path):
    """GET /api/evaluations/{id}/table: rows = benchmark figures, columns = models, as stored and
    as published; ?format=csv|json: the same table as a file."""
    import csv

    from backend.db.models import Evaluation, JobStatus
    from backend.db.session import get_sessionmaker

    ds = api.post("/api/datasets/demo", params={"samples": 4, "val_fraction": 0.5}).json()
    ev = api.post("/api/evaluations", json={"dataset_id": ds["id"], "models": [{"model_id": 1}]}).json()
    summary = [{"label": "base", "n": 5, "metrics": {}, "datasets": [
                    {"name": "docvqa_val", "n": 3, "metrics": {"anls": 0.5}},
                    {"name": "mme", "n": 2, "metrics": {"mme_perception": 150.0, "mme_cognition": 0.0,
                                                        "mme_total": 150.0}}]},
               {"label": "job 3", "n": 3, "metrics": {}, "datasets": [
                   {"name": "docvqa_val", "n": 3, "metrics": {"anls": 2 / 3}}]}]
    with get_sessionmaker()() as s:
        row = s.get(Evaluation, ev["id"])
        row.status, row.summary = JobStatus.succeeded, summary
        s.commit()
    t = api.get(f"/api/evaluations/{ev['id']}/table").json()
    assert t["models"] == ["base", "job 3"] and t["status"] == "succeeded"
    assert [(r["benchmark"], r["figure"], r["n"], r["values"], r["unit"]) for r in t["rows"]] == [
        ("docvqa_val", "anls", 3, [0.5, 2 / 3], "percent"), ("mme", "mme_perception", 2, [150.0, None], "points"),
        ("mme", "mme_cognition", 2, [0.0, None], "points")]
    assert t["rows"][0]["published"] == [50.0, 100.0 * (2 / 3)] and t["rows"][1]["published"] == [150.0, None]

    r = api.get(f"/api/evaluations/{ev['id']}/table", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f'filename="evaluation-{ev["id"]}-table.csv"' in r.headers["content-disposition"]
    assert list(csv.reader(r.text.splitlines())) == [
        ["benchmark", "figure", "samples", "base", "job 3"], ["docvqa_val", "anls", "3", "0.5", repr(2 / 3)],
        ["mme", "mme_perception", "2", "150.0", ""], ["mme", "mme_cognition", "2", "0.0", ""]]
    r = api.get(f"/api/evaluations/{ev['id']}/table", params={"format": "json"})
    assert r.json() == {"models": ["base", "job 3"], "rows": [
        {"benchmark": "docvqa_val", "figure": "anls", "n": 3, "values": [0.5, 2 / 3]},
        {"benchmark": "mme", "figure": "mme_perception", "n": 2, "values": [150.0, None]},
        {"benchmark": "mme", "figure": "mme_cognition", "n": 2, "values": [0.0, None]}]}
    r = api.get(f"/api/evaluations/{ev['id']}/table", params={"format": "xlsx"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "format"
