"""Fast checks of the UI's own logic (no browser, no server): what gets uploaded, what a job
is sent as, and what the user reads in a report, a job and its artifacts."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from ui.bundle import BundleError, bundle
from ui.pages import job_view, report_view, train


def test_loose_images_land_where_the_annotation_points(tmp_path: Path):
    ann = tmp_path / "data.jsonl"
    ann.write_text(json.dumps({"id": 1, "image": "images/cat.png", "conversations": []}) + "\n"
                   + json.dumps({"id": 2, "image": ["sub/a.jpg", "sub/b.jpg"], "conversations": []}) + "\n")
    files = [ann]
    for name in ("cat.png", "a.jpg", "b.jpg", "extra.png"):
        (tmp_path / name).write_bytes(b"x")
        files.append(tmp_path / name)
    out = tmp_path / "out"
    out.mkdir()
    with zipfile.ZipFile(bundle(files, out)) as z:
        assert sorted(z.namelist()) == ["data.jsonl", "extra.png", "images/cat.png", "sub/a.jpg", "sub/b.jpg"]


def test_a_zip_passes_through_and_mixtures_are_refused(tmp_path: Path):
    z = tmp_path / "d.zip"
    z.write_bytes(b"PK")
    assert bundle([z], tmp_path) == z
    with pytest.raises(BundleError, match="not both"):
        bundle([z, tmp_path / "a.jsonl"], tmp_path)
    with pytest.raises(BundleError, match="exactly one .jsonl"):
        bundle([tmp_path / "a.png"], tmp_path)


def test_the_job_is_sent_as_preset_plus_changed_switches():
    presets = {"defaults": {"learning_rate": 2e-4, "max_steps": -1, "zero_stage": 1, "global_batch_size": None},
               "presets": {"demo": {"max_steps": 20, "zero_stage": 2}}}
    values = {f: None for f, _ in train.FIELDS}
    values.update(learning_rate=2e-4, max_steps=7.0, zero_stage=2, global_batch_size=None)
    overrides = train._overrides(presets, "demo", [values[f] for f, _ in train.FIELDS])
    assert overrides == {"max_steps": 7}


def test_rejected_upload_lists_problems_with_line_numbers():
    html = report_view.rejected_html("2 error(s) in data.jsonl", [
        {"severity": "error", "code": "json", "file": "data.jsonl", "line": 2, "sample_id": None,
         "message": "invalid JSON"},
        {"severity": "error", "code": "image_missing", "file": "data.jsonl", "line": 9, "sample_id": "9",
         "message": "image 'x.png' not found"}])
    assert "line 2" in html and "line 9" in html and "x.png" in html and "Nothing was registered" in html


def test_smoothed_loss_follows_the_trend_without_start_bias():
    assert job_view.smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    s = job_view.smooth([4.0, 3.0, 2.0, 1.0])
    assert s[0] == pytest.approx(4.0) and s[-1] > 1.0 and all(a > b for a, b in zip(s, s[1:], strict=False))


def test_progress_shows_steps_percent_and_eta():
    job = {"status": "running", "step": 5, "total_steps": 20, "started_at": None, "eta_seconds": 75}
    html = job_view.progress_html(job, {"values": {"eta_seconds": 999}})
    assert "step 5 / 20" in html and "25%" in html and "ETA 1m 15s" in html


def test_list_and_job_view_show_the_same_eta():
    """Both read the API's eta_seconds (the trainer's), never an elapsed-time guess of their own."""
    job = {"id": 1, "status": "running", "step": 5, "total_steps": 20, "started_at": "2020-01-01T00:00:00Z",
           "eta_seconds": 75, "model_id": 1, "dataset_id": 1, "preset": "demo", "created_at": None}
    listed = job_view.jobs_table([job], {}, {}, None)
    assert "1m 15s" in listed and "ETA 1m 15s" in job_view.progress_html(job, None)
    assert "ETA –" in job_view.progress_html({**job, "eta_seconds": None}, None)


def test_two_viewers_of_one_job_show_one_eta():
    """Issue 25: two tabs on one job showed "58s" and "1m 27s". The page counts down to the API's
    finish instant (eta_at), not from seconds-left read at different moments."""
    from datetime import UTC, datetime, timedelta

    at = (datetime.now(UTC) + timedelta(seconds=95.5)).isoformat()
    first = {"id": 1, "status": "running", "step": 83, "total_steps": 200, "eta_at": at, "eta_seconds": 58}
    second = {**first, "step": 85, "eta_seconds": 87}  # read later, the same step row's instant
    assert "ETA 1m 35s" in job_view.progress_html(first, None)
    assert "ETA 1m 35s" in job_view.progress_html(second, None)


def test_a_job_without_a_step_says_it_is_starting_and_for_how_long():
    job = {"status": "running", "step": 0, "total_steps": 20, "started_at": "2020-01-01T00:00:00+00:00"}
    html = job_view.progress_html(job, None)
    assert "starting for" in html and "DeepSpeed" in html


def test_a_job_in_a_phase_says_which_and_for_how_long():
    from datetime import UTC, datetime, timedelta

    since = (datetime.now(UTC) - timedelta(seconds=95)).isoformat()
    job = {"status": "running", "step": 0, "total_steps": 20, "started_at": since, "phase": "loading the model",
           "phase_since": since}
    html = job_view.progress_html(job, None)
    assert "loading the model · for 1m 35s" in html and "starting for" not in html


def test_a_cancel_is_not_an_error_and_resume_needs_a_checkpoint():
    base = {"id": 3, "preset": "demo", "created_at": None, "model_id": 1, "dataset_id": 1}
    cancelled = {**base, "status": "cancelled", "failure_reason": "cancelled by the user; no checkpoint saved"}
    html = job_view.header_html(cancelled, "m", "d")
    assert "vl-notice-info" in html and "vl-notice-error" not in html and "cancelled by the user" in html
    assert "vl-notice-error" in job_view.header_html({**cancelled, "status": "failed", "failure_reason": "OOM"},
                                                     "m", "d")
    assert not job_view.resume_offered(cancelled)  # nothing to continue from (the API would say 409)
    assert job_view.resume_offered({**cancelled, "last_checkpoint": "/runs/3/checkpoints/checkpoint-17"})
    assert not job_view.resume_offered({**base, "status": "succeeded", "last_checkpoint": "/x/checkpoint-2"})


def test_upload_options_follow_the_training_rule():
    from ui.pages.datasets import upload_options

    assert upload_options(None, 0.2, None, 2048, False) == {"drop_bad_lines": False, "val_fraction": 0.2}
    opts = upload_options(1, 0.2, "/tmp/val.jsonl", 2048, True)
    assert opts == {"drop_bad_lines": True, "validation": Path("/tmp/val.jsonl"), "max_seq_length": 2048,
                    "truncation": "truncate"}


def test_truncated_lines_are_named_after_an_upload():
    from ui.pages import report_view

    ds = {"report": {"issues": [{"code": "truncated", "line": 4, "severity": "warning", "message": "x"},
                                {"code": "other", "line": 5, "severity": "warning", "message": "y"}]}}
    html = report_view.length_warning(ds)
    assert "1 sample(s) are longer than max_seq_length" in html and "Line 4 " in html
    assert report_view.length_warning({"report": {"issues": []}}) == ""


def test_artifacts_group_final_model_and_checkpoints():
    job = {"id": 3, "last_checkpoint": "/runs/3/checkpoints/checkpoint-14",
           "run_files": ["spec.json", "final/config.json", "final/model.safetensors",
                         "checkpoints/checkpoint-14/model.safetensors"]}
    html = job_view.artifacts_html(job, lambda p: "/api" + p)
    assert html.index("Final model") < html.index("Checkpoint at step") < html.index("Run files")
    assert "href='/api/jobs/3/files/final/model.safetensors'" in html
    assert "latest" in html


def test_plot_frames_are_numeric_so_the_charts_draw_lines():
    metrics = [{"step": 1, "loss": 2.0, "values": {"grad_norm": 3.0}}, {"step": 2, "loss": 1.5, "values": {}},
               {"step": 2, "loss": None, "values": {"eval_loss": 1.7}}]
    loss = job_view.loss_frame(metrics)
    assert loss["loss"].dtype == float and set(loss["series"]) == {"loss", "smoothed", "validation"}
    assert job_view.series_frame(metrics, "grad_norm", "g")["grad_norm"].dtype == float
    assert job_view.series_frame([], "grad_norm", "g")["grad_norm"].dtype == float


def test_sample_preview_renders_what_the_core_computes(tmp_path: Path):
    """The page renders the core's own preview (what ``GET /api/datasets/{id}/samples/{n}``
    returns): trained spans highlighted, the image with its tile grid."""
    from backend.core.demo_data import write_zip
    from backend.core.preview import preview_sample, read_record
    from backend.core.validation import ValidationSettings
    from ui.pages import preview_view

    with zipfile.ZipFile(write_zip(tmp_path / "d.zip", n=4)) as z:
        z.extractall(tmp_path / "d")
    ann = next((tmp_path / "d").rglob("*.jsonl"))
    pv = preview_sample(read_record(ann, 3), ann.parent, settings=ValidationSettings(template="internlm2-chat"))
    html = preview_view.preview_html(pv, 3)
    answer = pv["conversations"][-1]["value"]
    assert "Sample on line 3" in html
    assert f"<span class='vl-trained'>{answer}" in html
    assert "vl-imgtok" in html and pv["images"][0]["path"] in html


def test_meta_builder_sends_only_ticked_ready_datasets():
    from ui.pages import meta_builder

    frame = meta_builder.rows_for([{"id": 1, "name": "a", "status": "ready"}, {"id": 2, "name": "b"},
                                   {"id": 3, "name": "c", "status": "validating"}])
    assert list(frame["id"]) == [1, 2]
    frame.loc[frame["id"] == 2, ["use", "repeat_time", "data_augment"]] = [True, 0.5, True]
    assert meta_builder.request_from(frame) == [{"dataset_id": 2, "name": "b", "repeat_time": 0.5,
                                                 "data_augment": True}]


def test_compare_overlays_one_series_per_job_and_escapes_settings():
    from ui.pages import compare

    cmp = {"jobs": [{"id": 1}, {"id": 2}], "series": {"1": [{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.0}],
                                                     "2": [{"step": 1, "loss": 3.0}]},
           "differing": [{"field": "template", "values": ["<b>x</b>", None]}], "evaluations": []}
    frame = compare.curve_frame(cmp["series"], "loss")
    assert frame.to_dict("records") == [{"step": 1, "loss": 2.0, "job": "job 1"}, {"step": 1, "loss": 3.0, "job": "job 2"}]
    assert compare.curve_frame(cmp["series"], "eval_loss")["job"].tolist() == ["job 1"]
    html = compare.differing_table(cmp)
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "null" in html and "<b>x</b>" not in html
    assert "No evaluation has scored these runs" in compare.scores_table(cmp)
    ev = {"evaluation_id": 4, "dataset_id": None, "split": "validation", "mixture": ["dots", "<bars>"],
          "models": [{"label": "job 1", "n": 5, "metrics": {"exact_match": 0.6}}]}
    html = compare.scores_table({**cmp, "evaluations": [ev]})
    assert "mixture of dots, &lt;bars&gt; (held-out parts, overall)" in html and "0.600" in html
    assert "dataset #None" not in html
    suite = {**ev, "mixture": None, "benchmarks": ["docvqa_val", "pope"],
             "models": [{"label": "job 1", "n": 5, "metrics": {"docvqa_val · anls": 0.25}}]}
    html = compare.scores_table({**cmp, "evaluations": [suite]})
    assert "benchmark suite: docvqa_val, pope" in html and "docvqa_val · anls" in html and "0.250" in html


def test_problems_notice_lists_every_field_and_line():
    from ui.widgets import problems_notice

    html = problems_notice("Refused", "invalid job", [{"field": "learning_rate", "message": "<bad>"},
                                                      {"file": "a.jsonl", "line": 3, "message": "no image"}])
    assert "<b>learning_rate</b>: &lt;bad&gt;" in html and "a.jsonl line 3" in html


def test_the_job_streams_events_parse_with_their_cursor():
    """The Jobs page's reader of GET /api/jobs/{id}/events (ui/events.py): the id is the cursor
    it reconnects from (Last-Event-ID); a bare retry hint is no event."""
    from ui.events import Event, parse

    got = parse(["id: 12:3", "event: log", 'data: {"seq": 12, "stream": "stdout", "line": "step 3/9"}'])
    assert got == Event("log", "12:3", {"seq": 12, "stream": "stdout", "line": "step 3/9"})
    assert parse(["retry: 1000"]) is None
