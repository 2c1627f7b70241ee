"""The Train page's mixture and the job view's mixture table (issue 17): pure functions."""

from __future__ import annotations

import pandas as pd

from ui.pages.meta_builder import COLUMNS
from ui.pages.mixture_view import data_label, mixture_html
from ui.pages.train import mixture_request

JOB = {"id": 3, "dataset_id": 1, "mixture": {
    "datasets": [
        {"name": "dots", "source": "dataset", "dataset_id": 1, "lines": 260, "repeat_time": 2, "data_augment": False,
         "max_dynamic_patch": None, "samples": 520, "trained": {"samples": 520, "kept": 518, "tokens": 140_000}},
        {"name": "bars", "source": "meta_file", "dataset_id": None, "lines": 160, "repeat_time": 0.5,
         "data_augment": True, "max_dynamic_patch": 2, "samples": 80,
         "trained": {"samples": 80, "kept": 80, "tokens": 20_000}}],
    "lines": 420, "samples": 600, "trained": {"samples": 600, "kept": 598, "tokens": 160_000}}}


def test_the_meta_builder_table_becomes_the_jobs_mixture():
    frame = pd.DataFrame([[True, 1, "dots", 2.0, False, None], [False, 2, "skip", 1.0, False, 3],
                          [True, 3, "bars", 0.5, True, 2.0], [True, 4, "cats", 1.0, False, float("nan")],
                          [True, 5, "owls", 1.0, False, ""]], columns=COLUMNS)
    assert mixture_request(frame, " /shared/m.json ", "") == {
        "datasets": [{"dataset_id": 1, "name": "dots", "repeat_time": 2.0, "data_augment": False},
                     {"dataset_id": 3, "name": "bars", "repeat_time": 0.5, "data_augment": True, "max_dynamic_patch": 2},
                     {"dataset_id": 4, "name": "cats", "repeat_time": 1.0, "data_augment": False},
                     {"dataset_id": 5, "name": "owls", "repeat_time": 1.0, "data_augment": False}],
        "meta_path": "/shared/m.json"}  # an empty max_dynamic_patch is the job's
    assert mixture_request(frame.iloc[:0], None, None) == {"datasets": []}


def test_job_view_shows_what_each_dataset_contributed():
    html = mixture_html(JOB)
    for text in ("dots", "bars", "(meta file)", "520", "518", "140,000", "600", "598", "0.5"):
        assert text in html, text
    assert mixture_html({"id": 1}) == ""
    assert data_label(JOB, {1: "dots"}) == "mixture of 2: dots, bars"
    one = {"dataset_id": 1, "mixture": {"datasets": [{"name": "dots", "source": "dataset"}]}}
    assert data_label(one, {1: "dots"}) == "dots"
