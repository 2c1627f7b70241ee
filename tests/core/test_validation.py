"""The per-line rules of the validation engine: each with a failing and a passing case."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import image_bytes, sample, write_jsonl

from backend.core.model_folder import FastTokenizer
from backend.core.validation import (
    ValidationCancelled,
    ValidationSettings,
    Validator,
    drop_bad_lines,
    validate_annotation,
)


def run(tmp_path: Path, records, **kw):
    (tmp_path / "images").mkdir(exist_ok=True)
    if not (tmp_path / "images" / "a.png").exists():
        (tmp_path / "images" / "a.png").write_bytes(image_bytes(64, 48))
        (tmp_path / "images" / "b.png").write_bytes(image_bytes(900, 300))
    ann = write_jsonl(tmp_path / "t.jsonl", records)
    return validate_annotation(ann, tmp_path, workers=1, **kw)


def codes(report, severity="error"):
    return {code: n for (sev, code), n in report.counts.items() if sev == severity}


def test_valid_dataset_is_clean(dataset):
    r = validate_annotation(dataset, dataset.parent, workers=1)
    assert r.ok and r.samples == 4 and r.images == 4 and r.lines == 4
    assert codes(r) == {} and codes(r, "warning") == {}
    assert codes(r, "info") == {"image_tag_added": 1}
    d = r.to_dict()
    assert d["ok"] is True and d["totals"] == {"error": 0, "warning": 0, "info": 1}
    assert d["stats"]["text_only_samples"] == 1 and d["stats"]["multi_image_samples"] == 1
    json.dumps(d)  # JSON-able


@pytest.mark.parametrize("line, code", [
    ("[1, 2]", "not_object"),
    ('{"id": 1, "conversations": [}', "json"),
    (json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}), "missing_id"),
    (json.dumps(sample(None, image=None)), "bad_id"),
    (json.dumps(sample([1], image=None)), "bad_id"),
    (json.dumps({"id": 1, "conversations": []}), "conversations"),
    (json.dumps({"id": 1, "conversations": "hi"}), "conversations"),
    (json.dumps({"id": 1}), "conversations"),
    (json.dumps({"id": 1, "conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}), "turn_format"),
    (json.dumps({"id": 1, "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]}),
     "turn_format"),
    (json.dumps({"id": 1, "conversations": [{"from": "user", "value": "q"}, {"from": "gpt", "value": "a"}]}), "role"),
    (json.dumps({"id": 1, "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}), "role"),
    (json.dumps({"id": 1, "conversations": [{"from": "human", "value": "q"}]}), "role"),
    (json.dumps({"id": 1, "conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"},
                                            {"from": "gpt", "value": "a"}]}), "role"),
    (json.dumps({"id": 1, "conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"},
                                            {"from": "gpt", "value": "a"}]}), "role"),
    (json.dumps({"id": 1, "conversations": [{"from": "system", "value": "s"}]}), "role"),
    (json.dumps(sample(1, image=3)), "image_field"),
    (json.dumps(sample(1, image=["images/a.png", 3])), "image_field"),
    (json.dumps(sample(1, image=None, question="<image>\nq")), "image_tags"),
    (json.dumps(sample(1, question="<image>\n<image>\nq")), "image_tags"),
    (json.dumps(sample(1, image=["images/a.png", "images/b.png"], question="<image>\nq")), "image_tags"),
    (json.dumps(sample(1, answer="look: <image>")), "image_tags"),
    (json.dumps(sample(1, question="<image>\nwhat is <IMG_CONTEXT>?")), "reserved_token"),
    (json.dumps(sample(1, image=None, question="<img>x</img>")), "reserved_token"),
])
def test_line_errors(tmp_path, line, code):
    r = run(tmp_path, [line, sample(99)])
    assert not r.ok
    assert codes(r) == {code: 1}
    (issue,) = r.errors
    assert issue.line == 1 and issue.file == "t.jsonl" and issue.message
    assert r.samples == 1  # the good line still counts


@pytest.mark.parametrize("record", [
    sample(1),
    sample("a-string-id"),
    sample(1, image=None, question="text only", answer="fine"),
    sample(1, image=["images/a.png", "images/b.png"], question="<image>\n<image>\nCompare."),
    sample(1, image=["images/a.png", "images/b.png"], question="first <image>", answer="ok",
           conversations=[{"from": "human", "value": "<image> first"}, {"from": "gpt", "value": "a"},
                          {"from": "human", "value": "then <image>"}, {"from": "gpt", "value": "b"}]),
    {"id": 1, "image": "images/a.png", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nq"},
        {"from": "gpt", "value": "a"}]},
])
def test_line_passes(tmp_path, record):
    r = run(tmp_path, [record])
    assert r.ok, r.errors
    assert codes(r, "warning") == {}


def test_single_image_without_tag_is_info(tmp_path):
    r = run(tmp_path, [sample(1, question="What is it?")])
    assert r.ok and codes(r, "info") == {"image_tag_added": 1}


@pytest.mark.parametrize("record, code", [
    (sample(1, answer=""), "empty_answer"),
    (sample(1, answer="  \n"), "empty_answer"),
    (sample(1, image=None, question="   "), "blank_turn"),
    (sample(1, image="", question="q"), "empty_image"),
    (sample(1, image=[], question="q"), "empty_image"),
    (sample(1, answer="the end <|im_end|> really"), "special_token"),
])
def test_line_warnings(tmp_path, record, code):
    r = run(tmp_path, [record])
    assert r.ok
    assert codes(r, "warning") == {code: 1}


def test_duplicate_ids_are_errors_with_first_line(tmp_path):
    r = run(tmp_path, [sample(1, answer="a"), sample(2, answer="b"), sample(1, answer="c"), sample("1", answer="d")])
    assert codes(r) == {"duplicate_id": 2}
    assert [(i.line, i.sample_id) for i in r.errors] == [(3, "1"), (4, "1")]
    assert "first used on line 1" in r.errors[0].message
    assert r.samples == 2 and sorted(r.error_lines) == [3, 4]


def test_exact_duplicate_samples_are_warnings(tmp_path):
    r = run(tmp_path, [sample(1), sample(2), sample(3, answer="other")])
    assert r.ok
    assert codes(r, "warning") == {"duplicate_sample": 1}
    (w,) = r.warnings
    assert w.line == 2 and w.sample_id == "2" and "line 1" in w.message


def test_examples_are_capped_but_counts_are_complete(tmp_path):
    r = run(tmp_path, ["not json"] * 50, settings=ValidationSettings(max_examples=5))
    assert r.counts[("error", "json")] == 50
    assert len(r.errors) == 5 and [i.line for i in r.errors] == [1, 2, 3, 4, 5]
    assert r.to_dict()["by_kind"]["error"] == {"json": 50}


def test_blank_lines_are_warned_and_skipped(tmp_path):
    r = run(tmp_path, [sample(1), "", "   ", sample(2, answer="x")])
    assert r.ok and r.samples == 2 and r.lines == 4
    assert codes(r, "warning") == {"blank_line": 2}


def test_empty_and_blank_only_files(tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    r = validate_annotation(tmp_path / "e.jsonl", tmp_path)
    assert not r.ok and codes(r) == {"empty": 1} and "empty file" in r.errors[0].message
    (tmp_path / "b.jsonl").write_bytes(b"\n  \n")
    r = validate_annotation(tmp_path / "b.jsonl", tmp_path)
    assert not r.ok and codes(r) == {"empty": 1}


def test_missing_annotation_and_root(tmp_path):
    r = validate_annotation(tmp_path / "nope.jsonl", tmp_path)
    assert not r.ok and codes(r) == {"file": 1}
    ann = write_jsonl(tmp_path / "t.jsonl", [sample(1, image=None, question="q")])
    r = validate_annotation(ann, tmp_path / "missing-root")
    assert codes(r) == {"root": 1}


def test_per_sample_rows_and_stats(dataset, tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    r = validate_annotation(dataset, dataset.parent, workers=1, per_sample_out=rows_path,
                            settings=ValidationSettings(max_dynamic_patch=6))
    rows = [json.loads(x) for x in rows_path.read_text().splitlines()]
    assert [x["line"] for x in rows] == [1, 2, 3, 4] and all(x["ok"] for x in rows)
    # 64x48 -> 3x2 grid + thumbnail, but 1x1 when two images share the budget (6 // 2 = 3);
    # 1000x500 -> 2x1 + thumbnail
    assert [x["tiles"] for x in rows] == [[7], [1, 3], [], [3]]
    assert [x["image_tokens"] for x in rows] == [7 * 256 + 2, 256 + 2 + 3 * 256 + 2, 0, 3 * 256 + 2]
    assert rows[0]["text_tokens"] is None  # no tokenizer
    st = r.to_dict()["stats"]
    assert st["tiles_per_image"] == {"1": 1, "3": 2, "7": 1} and st["tiles_total"] == 14
    assert st["image_sizes"]["smallest"] == [64, 48] and st["image_sizes"]["largest"] == [1000, 500]
    assert sum(st["image_sizes"]["longest_side"].values()) == 4


def test_progress_and_cancel(tmp_path):
    records = [sample(i, image=None, question=f"question {i}") for i in range(3000)]
    ann = write_jsonl(tmp_path / "t.jsonl", records)
    seen: list[tuple[int, int]] = []
    r = validate_annotation(ann, tmp_path, workers=1, progress=lambda d, t: seen.append((d, t)))
    size = ann.stat().st_size
    assert r.ok and len(seen) >= 3 and seen[-1] == (size, size)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
    cancel = threading.Event()

    def stop(done, total):
        cancel.set()

    with pytest.raises(ValidationCancelled):
        validate_annotation(ann, tmp_path, workers=1, progress=stop, cancel=cancel)


def test_parallel_equals_serial(tmp_path, tokenizer):
    (tmp_path / "images").mkdir()
    for k in range(20):
        (tmp_path / "images" / f"{k}.png").write_bytes(image_bytes(40 + 37 * k, 60 + 11 * k))
    records = [sample(i, image=f"images/{i % 25}.png", question=f"q{i % 900}") for i in range(2500)]
    records[7] = "garbage"
    ann = write_jsonl(tmp_path / "t.jsonl", records)
    fast = FastTokenizer(tokenizer.backend_tokenizer)  # picklable without importing transformers
    settings = ValidationSettings(template="Hermes-2", max_seq_length=1500)
    serial = validate_annotation(ann, tmp_path, workers=1, per_sample_out=tmp_path / "s.jsonl", settings=settings,
                                 tokenizer=fast)
    with Validator(settings, tokenizer=fast, workers=2) as v:
        parallel = v.validate(ann, tmp_path, per_sample_out=tmp_path / "p.jsonl")
    assert serial.to_dict() == parallel.to_dict()
    assert (tmp_path / "s.jsonl").read_bytes() == (tmp_path / "p.jsonl").read_bytes()
    assert serial.counts[("error", "image_missing")] == 500 and serial.counts[("error", "json")] == 1
    assert serial.counts[("warning", "duplicate_sample")] > 0
    assert serial.counts[("error", "too_long")] > 0 and serial.stats.token_samples > 0


def test_drop_bad_lines_writes_a_new_clean_file(tmp_path):
    def text(i, answer):
        return sample(i, image=None, question="q", answer=answer)

    ann = write_jsonl(tmp_path / "t.jsonl", [text(1, "a"), "oops", "", text(2, "b"), text(1, "c")], newline="\r\n")
    original = ann.read_bytes()
    r = validate_annotation(ann, tmp_path, workers=1)
    assert not r.ok
    out = tmp_path / "t.clean.jsonl"
    assert drop_bad_lines(ann, r, out) == 2
    assert ann.read_bytes() == original
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [1, 2]
    assert b"\r" not in out.read_bytes()
    assert validate_annotation(out, tmp_path, workers=1).ok
    with pytest.raises(FileExistsError):
        drop_bad_lines(ann, r, out)
    with pytest.raises(FileExistsError):
        drop_bad_lines(ann, r, ann)


def test_template_without_tokenizer_is_reported(tmp_path):
    r = run(tmp_path, [sample(1)], settings=ValidationSettings(template="phi3-chat", max_seq_length=100))
    assert codes(r, "info")["no_tokenizer"] == 1
    # the image tokens alone (7 tiles x 256) are over the limit even without a tokenizer
    assert codes(r) == {"too_long": 1}


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError):
        ValidationSettings(template="nope")
    with pytest.raises(ValueError):
        ValidationSettings(truncation="cut")  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", [1 << 17, 1000])  # one round; many rounds
def test_duplicate_finder_equals_the_naive_rule(budget):
    import random
    from array import array

    from backend.core.dedup import DuplicateFinder

    rng = random.Random(1)
    for n in (0, 1, 2, 50, 20_000):
        values = [rng.randrange(max(1, n // 3)) * 0x9E3779B97F4A7C15 % 2**64 for _ in range(n)]
        lines = sorted(rng.sample(range(1, 3 * n + 2), n))
        finder = DuplicateFinder(budget=budget)
        half = n // 2  # two chunks, as the engine adds them
        finder.add(array("Q", values[:half]), array("I", lines[:half]))
        finder.add(array("Q", values[half:]), array("I", lines[half:]))
        dups, firsts = finder.duplicates()
        finder.close()
        first_seen: dict[int, int] = {}
        expected = []
        for v, ln in zip(values, lines, strict=True):
            if v in first_seen:
                expected.append((ln, first_seen[v]))
            else:
                first_seen[v] = ln
        assert list(zip(dups.tolist(), firsts.tolist(), strict=True)) == expected
