"""The meta file: exact format, merging, repeat_time semantics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.core.meta import (
    MetaEntry,
    MetaError,
    build_meta,
    check_allowed,
    dumps_meta,
    effective_length,
    merge_meta,
    parse_meta,
    subsample_indices,
    summarize,
)

RELEASED_EXCERPT = """{
  "sharegpt4v_instruct_gpt4-vision_cap100k": {
    "root": "playground/data/",
    "annotation": "playground/opensource/sharegpt4v_instruct_gpt4-vision_cap100k.jsonl",
    "data_augment": false,
    "repeat_time": 1,
    "length": 102025
  },
  "dvqa_train_200k": {
    "root": "playground/data/dvqa/",
    "annotation": "playground/opensource/dvqa_train_200k.jsonl",
    "data_augment": false,
    "repeat_time": 0.5,
    "length": 200000
  },
  "ai2d_train_12k": {
    "root": "playground/data/ai2d/",
    "annotation": "playground/opensource/ai2d_train_12k.jsonl",
    "data_augment": false,
    "repeat_time": 2,
    "length": 12413,
    "max_dynamic_patch": 6
  }
}
"""


def test_build_meta_equals_expected_json():
    entries = {
        "my_charts": MetaEntry(root="/data/datasets/7", annotation="/data/datasets/7/train.jsonl", length=1200),
        "my_docs": MetaEntry(root="/data/datasets/9", annotation="/data/datasets/9/docs.jsonl", data_augment=True,
                             repeat_time=3.0, length=80, max_dynamic_patch=12),
        "sample_of_big": MetaEntry(root="/shared/big", annotation="/shared/big/a.jsonl", repeat_time=0.25,
                                   length=665298),
    }
    expected = {
        "my_charts": {"root": "/data/datasets/7", "annotation": "/data/datasets/7/train.jsonl",
                      "data_augment": False, "repeat_time": 1, "length": 1200},
        "my_docs": {"root": "/data/datasets/9", "annotation": "/data/datasets/9/docs.jsonl", "data_augment": True,
                    "repeat_time": 3, "length": 80, "max_dynamic_patch": 12},
        "sample_of_big": {"root": "/shared/big", "annotation": "/shared/big/a.jsonl", "data_augment": False,
                          "repeat_time": 0.25, "length": 665298},
    }
    built = build_meta(entries)
    assert built == expected
    assert list(built["my_docs"]) == ["root", "annotation", "data_augment", "repeat_time", "length",
                                      "max_dynamic_patch"]
    text = dumps_meta(entries)
    assert json.loads(text) == expected and '"repeat_time": 3,' in text and text.endswith("}\n")


def test_released_format_round_trips_byte_for_byte():
    entries = parse_meta(RELEASED_EXCERPT)
    assert entries["ai2d_train_12k"].max_dynamic_patch == 6
    assert dumps_meta(entries) == RELEASED_EXCERPT


def test_unknown_keys_are_kept():
    entries = parse_meta({"x": {"root": "r", "annotation": "a.jsonl", "repeat_time": 1, "length": 1,
                                "data_augment": False, "note": "kept"}})
    assert build_meta(entries)["x"]["note"] == "kept"


@pytest.mark.parametrize("raw, fragment", [
    ("not json", "not valid JSON"),
    ("[]", "non-empty JSON object"),
    ({}, "non-empty JSON object"),
    ({"x": 3}, "must be an object"),
    ({"x": {"annotation": "a.jsonl"}}, "'root'"),
    ({"x": {"root": "r", "annotation": ""}}, "'annotation'"),
    ({"x": {"root": "r", "annotation": "a.json"}}, ".jsonl"),
    ({"x": {"root": "r", "annotation": "a.jsonl", "repeat_time": 0}}, "positive"),
    ({"x": {"root": "r", "annotation": "a.jsonl", "repeat_time": 1.5}}, "whole number"),
    ({"x": {"root": "r", "annotation": "a.jsonl", "repeat_time": "2"}}, "number"),
    ({"x": {"root": "r", "annotation": "a.jsonl", "length": 2.5}}, "'length'"),
    ({"x": {"root": "r", "annotation": "a.jsonl", "data_augment": "yes"}}, "'data_augment'"),
    ({"x": {"root": "r", "annotation": "a.jsonl", "max_dynamic_patch": 0}}, "'max_dynamic_patch'"),
    ({" ": {"root": "r", "annotation": "a.jsonl"}}, "name"),
])
def test_parse_meta_refuses(raw, fragment):
    with pytest.raises(MetaError) as e:
        parse_meta(raw if isinstance(raw, str) else json.dumps(raw))
    assert any(fragment in p for p in e.value.problems)


def test_parse_meta_reports_all_problems_at_once():
    with pytest.raises(MetaError) as e:
        parse_meta({"a": {"root": 1, "annotation": "a.jsonl"}, "b": {"root": "r", "annotation": "b.jsonl",
                                                                     "repeat_time": -1}})
    assert len(e.value.problems) == 2


def test_merge_with_a_released_mixture():
    mine = {"my_charts": MetaEntry(root="/d/7", annotation="/d/7/t.jsonl", length=10)}
    released = parse_meta(RELEASED_EXCERPT)
    merged = merge_meta(mine, released)
    assert list(merged) == ["my_charts", *released]
    clash = {"dvqa_train_200k": MetaEntry(root="/d/8", annotation="/d/8/t.jsonl")}
    with pytest.raises(MetaError, match="used twice"):
        merge_meta(released, clash)
    assert "dvqa_train_200k_2" in merge_meta(released, clash, on_conflict="rename")
    assert merge_meta(released, clash, on_conflict="replace")["dvqa_train_200k"].root == "/d/8"
    same_file = {"again": released["dvqa_train_200k"]}
    with pytest.raises(MetaError, match="already listed"):
        merge_meta(released, same_file)


@pytest.mark.parametrize("n, rt, expected", [(100, 1, 100), (100, 2, 200), (100, 0.5, 50), (7, 0.5, 3),
                                             (3, 0.1, 0), (665298, 0.25, 166324)])
def test_effective_length(n, rt, expected):
    assert effective_length(n, rt) == expected
    assert len(subsample_indices(n, rt)) == expected


def test_subsample_semantics():
    assert subsample_indices(10, 0.3).tolist() == [0, 1, 2]  # the reference: the first int(N * r) lines
    assert subsample_indices(1000, 0.1).tolist() == list(range(100))
    assert subsample_indices(7, 0.5).tolist() == [0, 1, 2]  # int(3.5): the count the dataset table shows
    assert subsample_indices(3, 2).tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError):
        subsample_indices(3, 1.5)


def test_summarize_shows_effective_counts():
    s = summarize(parse_meta(RELEASED_EXCERPT))
    assert s["length"] == 102025 + 200000 + 12413
    assert s["effective"] == 102025 + 100000 + 24826
    assert s["datasets"][1] == {"name": "dvqa_train_200k", "length": 200000, "repeat_time": 0.5, "effective": 100000}


def test_build_refuses_bad_entries():
    with pytest.raises(MetaError):
        build_meta([("a", MetaEntry("r", "a.jsonl")), ("a", MetaEntry("r", "b.jsonl"))])
    with pytest.raises(MetaError):
        build_meta({"a": MetaEntry("r", "a.jsonl", repeat_time=2.5)})


def test_check_allowed(tmp_path: Path):
    (tmp_path / "shared" / "ds").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    assert check_allowed(tmp_path / "shared" / "ds", [tmp_path / "shared"]) == (tmp_path / "shared" / "ds").resolve()
    with pytest.raises(MetaError, match="not under an allowed"):
        check_allowed(tmp_path / "other", [tmp_path / "shared"])
    with pytest.raises(MetaError):
        check_allowed(tmp_path / "shared" / ".." / "other", [tmp_path / "shared"])
    (tmp_path / "shared" / "escape").symlink_to(tmp_path / "other")
    with pytest.raises(MetaError):
        check_allowed(tmp_path / "shared" / "escape", [tmp_path / "shared"])
    with pytest.raises(MetaError, match="none configured"):
        check_allowed(tmp_path / "shared", [])
