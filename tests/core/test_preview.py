"""The sample preview: images and tiles, rendered prompt, label mask, token counts."""

from __future__ import annotations

import json

import pytest
from conftest import image_bytes, sample, write_jsonl

from backend.core.preview import PreviewError, index_lines, preview_sample, read_record, tile_images
from backend.core.tiling import plan_tiles
from backend.core.validation import ValidationSettings

SETTINGS = ValidationSettings(template="internlm2-chat", max_dynamic_patch=6, max_seq_length=4096)


def test_preview_of_a_multi_image_sample(dataset, tokenizer):
    rec = read_record(dataset, 2)
    p = preview_sample(rec, dataset.parent, settings=SETTINGS, tokenizer=tokenizer)
    json.dumps(p)
    assert p["id"] == 2 and p["template"] == "internlm2-chat" and p["issues"] == []
    a, b = p["images"]
    assert (a["width"], a["height"], a["grid"], a["tiles"], a["max_tiles"]) == (64, 48, [1, 1], 1, 3)
    assert (b["grid"], b["thumbnail"], b["tiles"], b["resized"]) == ([2, 1], True, 3, [896, 448])
    assert b["boxes"] == [[0, 0, 448, 448], [448, 0, 896, 448]]
    assert b["source_boxes"] == [[0.0, 0.0, 500.0, 500.0], [500.0, 0.0, 1000.0, 500.0]]
    assert p["text"].startswith("<s><|im_start|>system\n")
    assert [s["text"] for s in p["segments"] if s["trained"]] == ["red<|im_end|>"]
    assert [s["image"] for s in p["segments"] if "image" in s] == [0, 1]
    t = p["tokens"]
    assert t["counts"]["image"] == (256 + 2) + (3 * 256 + 2)
    assert t["counts"]["total"] == t["counts"]["text"] + t["counts"]["image"] and not t["counts"]["over_limit"]
    assert [r["text"] for r in t["runs"] if r["trained"]] == ["red<|im_end|>"]
    assert [r["tokens"] for r in t["runs"] if r["image"] is not None] == [258, 770]
    assert sum(r["tokens"] for r in t["runs"]) == t["counts"]["total"]
    assert t["label_mismatch_spans"] == []


def test_preview_adds_the_image_tag_and_shows_limits(dataset, tokenizer):
    rec = read_record(dataset, 4)
    p = preview_sample(rec, dataset.parent, settings=ValidationSettings(template="phi3-chat", max_seq_length=100),
                       tokenizer=tokenizer)
    assert p["conversations"][0]["value"].startswith("<image>\n")
    assert {i["code"] for i in p["issues"]} == {"image_tag_added"}
    assert p["tokens"]["counts"]["over_limit"] and p["tokens"]["counts"]["truncation_cuts_image"] == 1
    assert p["text"].startswith("<|system|>\n")  # no BOS text: Phi-3 adds none


def test_preview_without_tokenizer_and_with_problems(tmp_path):
    p = preview_sample(sample(1, image="missing.png"), tmp_path, settings=SETTINGS)
    assert p["tokens"] is None and p["images"][0]["code"] == "image_missing"
    assert [i["code"] for i in p["issues"]] == ["image_missing"]
    p = preview_sample({"id": 1, "conversations": [{"from": "gpt", "value": "x"}]}, tmp_path, settings=SETTINGS)
    assert p["issues"][0]["code"] == "role" and "text" not in p
    with pytest.raises(PreviewError):
        preview_sample(sample(1), tmp_path, settings=ValidationSettings())


def test_tile_images_match_the_plan(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes(1000, 500))
    plan = plan_tiles(1000, 500, max_num=6)
    tiles = tile_images(tmp_path / "a.png", plan)
    assert len(tiles) == plan.num_tiles == 3 and all(t.size == (448, 448) for t in tiles)


def test_read_record_by_line(tmp_path):
    ann = write_jsonl(tmp_path / "t.jsonl", [sample(1), "", "not json", sample(4)])
    idx = index_lines(ann)
    assert len(idx) == 4
    assert read_record(ann, 4, idx)["id"] == 4 and read_record(ann, 1)["id"] == 1
    for line in (0, 2, 3, 5):
        with pytest.raises(PreviewError):
            read_record(ann, line, idx)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(sample(7)).encode())  # no final newline
    assert len(index_lines(bom)) == 1 and read_record(bom, 1)["id"] == 7
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert len(index_lines(tmp_path / "empty.jsonl")) == 0


def test_read_record_without_an_index_gives_the_same_lines(tmp_path):
    ann = write_jsonl(tmp_path / "t.jsonl", [sample(1), "", "not json", sample(4)])
    for cache in (None, tmp_path / "cache", tmp_path / "cache"):  # scanned now, scanned and kept, from the cache
        assert read_record(ann, 4, cache_dir=cache)["id"] == 4 and read_record(ann, 1, cache_dir=cache)["id"] == 1
        for line in (0, 2, 3, 5):
            with pytest.raises(PreviewError):
                read_record(ann, line, cache_dir=cache)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(sample(7)).encode())
    assert read_record(bom, 1, cache_dir=tmp_path / "cache")["id"] == 7


def _bytes_read() -> int:
    """Bytes this process has read through read(2) and friends (/proc/self/io ``rchar``)."""
    with open("/proc/self/io") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("rchar:"))


def test_preview_of_the_last_line_of_a_large_file_reads_only_that_line(tmp_path):
    """Once the file's line offsets are cached (the first preview scans it), a preview of any
    line is one seek: the process reads that line's bytes and the small cache files, never the
    file (before, every preview scanned it: 966 MB for the seed's largest file)."""
    line = json.dumps(sample(0)) + "\n"
    with open(tmp_path / "big.jsonl", "w") as f:
        for i in range(200_000):
            f.write(line.replace('"id": 0', f'"id": {i}'))
    size = (tmp_path / "big.jsonl").stat().st_size
    assert read_record(tmp_path / "big.jsonl", 1, cache_dir=tmp_path / "cache")["id"] == 0
    before = _bytes_read()
    rec = read_record(tmp_path / "big.jsonl", 200_000, cache_dir=tmp_path / "cache")
    read = _bytes_read() - before
    assert rec["id"] == 199_999
    # the line, the memo and two array headers (read 8 KiB at a time): a constant, not the 31 MB file
    assert read < 64 * 1024 and read < size // 400, (read, size)
