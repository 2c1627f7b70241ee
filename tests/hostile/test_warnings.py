"""A job that dropped samples (images deleted after validation) ends "succeeded with warnings",
in the API and in the UI."""

from __future__ import annotations

from backend.db.models import JobStatus as S
from backend.db.session import session_scope
from backend.services import jobs
from tests.backend.test_jobs_service import (
    ds,  # noqa: F401
    force_status,
    submit,
)
from ui.pages import job_view

# the trainer's metrics row (worker/training/callbacks.py) after two images went missing
ROW = {"step": 4, "loss": 1.5, "dropped_samples": 2, "dropped": {"unreadable_image": 2, "too_long": 0}}


def test_dropped_samples_make_a_success_with_warnings(api, ds):  # noqa: F811
    warned, clean = submit(api, ds)["id"], submit(api, ds)["id"]
    with session_scope() as s:
        jobs.append_metrics(s, warned, 1, [ROW])
        jobs.append_metrics(s, clean, 1, [{**ROW, "dropped_samples": 0, "dropped": {"unreadable_image": 0}}])
    for j in (warned, clean):
        force_status(j, S.succeeded)
    job = api.get(f"/api/jobs/{warned}").json()
    assert job["status"] == "succeeded"
    assert job["warnings"] == ["2 sample(s) dropped during training: unreadable_image 2"]
    assert api.get(f"/api/jobs/{clean}").json()["warnings"] == []
    listed = {j["id"]: j["warnings"] for j in api.get("/api/jobs").json()}
    assert listed == {warned: job["warnings"], clean: []}
    head = job_view.header_html(job, "demo", "shapes")
    assert "Succeeded with warnings" in head and "unreadable_image 2" in head
    assert "Succeeded with warnings" not in job_view.header_html(api.get(f"/api/jobs/{clean}").json(), "d", "s")
    table = job_view.jobs_table(api.get("/api/jobs").json(), {}, {}, None)
    assert table.count("Succeeded with warnings") == 1
