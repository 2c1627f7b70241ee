"""The benchmark-suite table (rows: benchmark figures, columns: models) and its exports."""

from __future__ import annotations

import csv
import io
import json

from backend.core.suite import published, suite_table, table_csv, table_json

SUMMARY = [
    {"label": "base", "n": 9, "metrics": {}, "datasets": [
        {"name": "textvqa_val", "n": 3, "metrics": {"vqa_accuracy": 0.7045}},
        {"name": "mme", "n": 4, "metrics": {"mme_perception": 1420.5, "mme_cognition": 300.0, "mme_total": 1720.5}},
        {"name": "pope", "n": 2, "metrics": {"pope_f1": 0.8, "pope_accuracy": 0.75, "pope_precision": 1.0}}]},
    {"label": "fine-tune", "n": 7, "metrics": {}, "datasets": [
        {"name": "textvqa_val", "n": 3, "metrics": {"vqa_accuracy": 0.71}},
        {"name": "mme", "n": 4, "metrics": {"mme_perception": 1433.0, "mme_cognition": 310.5, "mme_total": 1743.5}}]},
]


def test_rows_are_benchmark_figures_and_columns_models():
    t = suite_table(SUMMARY)
    assert t["models"] == ["base", "fine-tune"]
    assert [(r["benchmark"], r["figure"], r["values"]) for r in t["rows"]] == [
        ("textvqa_val", "vqa_accuracy", [0.7045, 0.71]),
        ("mme", "mme_perception", [1420.5, 1433.0]), ("mme", "mme_cognition", [300.0, 310.5]),
        ("pope", "pope_f1", [0.8, None]), ("pope", "pope_accuracy", [0.75, None])]  # not run for the fine-tune


def test_exports_and_published_units():
    t = suite_table(SUMMARY)
    rows = list(csv.reader(io.StringIO(table_csv(t))))
    assert rows[0] == ["benchmark", "figure", "samples", "base", "fine-tune"]
    assert rows[1] == ["textvqa_val", "vqa_accuracy", "3", "0.7045", "0.71"]
    assert rows[-1] == ["pope", "pope_accuracy", "2", "0.75", ""]
    assert json.loads(table_json(t)) == t
    assert published("vqa_accuracy", 0.7045) == 70.45 and published("mme_perception", 1420.5) == 1420.5
