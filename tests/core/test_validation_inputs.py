"""Bad input of every kind gives a clear error; zips, JSONL and meta files go through one engine."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from conftest import image_bytes, sample, write_jsonl

from backend.cli.validate_cmd import run_validate
from backend.core.sources import validate_path
from backend.core.validation import ValidationSettings, validate_annotation


def errors(report) -> dict[str, int]:
    return {code: n for (sev, code), n in report.counts.items() if sev == "error"}


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def jsonl(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_bom_is_tolerated_with_a_warning(tmp_path):
    ann = tmp_path / "t.jsonl"
    ann.write_bytes(b"\xef\xbb\xbf" + jsonl(sample(1, image=None, question="q"), sample(2, image=None, question="r")))
    r = validate_annotation(ann, tmp_path)
    assert r.ok and r.samples == 2
    assert r.counts[("warning", "bom")] == 1 and "byte-order mark" in r.warnings[0].message


def test_crlf_is_accepted_and_noted_once(tmp_path):
    ann = write_jsonl(tmp_path / "t.jsonl", [sample(i, image=None, question=f"q{i}") for i in range(5)], newline="\r\n")
    r = validate_annotation(ann, tmp_path)
    assert r.ok and r.samples == 5
    assert r.counts[("info", "crlf")] == 1 and "5 line(s)" in r.issues[-1].message


def test_invalid_utf8_is_reported_on_its_line(tmp_path):
    ann = tmp_path / "t.jsonl"
    ann.write_bytes(jsonl(sample(1, image=None, question="q")) + b'{"id": 2, "x": "\xff\xfe"}\n')
    r = validate_annotation(ann, tmp_path)
    assert errors(r) == {"encoding": 1}
    assert r.errors[0].line == 2 and "UTF-8" in r.errors[0].message
    assert r.samples == 1


def test_50mb_single_line_is_refused_in_bounded_memory(tmp_path):
    ann = tmp_path / "t.jsonl"
    with open(ann, "wb") as f:
        f.write(jsonl(sample(1, image=None, question="q")))
        f.write(b'{"id": 2, "conversations": [{"from": "human", "value": "' + b"a" * (50 << 20) + b'"}]}\n')
        f.write(jsonl(sample(3, image=None, question="r")))
    tracemalloc.start()
    try:
        r = validate_annotation(ann, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert errors(r) == {"line_too_long": 1}
    assert r.errors[0].line == 2 and "52,428,8" in r.errors[0].message
    assert r.samples == 2
    assert peak < 16 << 20


def test_line_limit_is_a_setting(tmp_path):
    ann = write_jsonl(tmp_path / "t.jsonl", [sample(1, image=None, question="x" * 500)])
    assert validate_annotation(ann, tmp_path).ok
    r = validate_annotation(ann, tmp_path, settings=ValidationSettings(max_line_bytes=200))
    assert errors(r) == {"line_too_long": 1}


def test_zip_upload_is_validated_per_jsonl(tmp_path):
    z = make_zip(tmp_path / "d.zip", {
        "images/a.png": image_bytes(),
        "train.jsonl": jsonl(sample(1, image="images/a.png")),
        "sub/more.jsonl": jsonl(sample(1, image="pics/b.png")),
        "sub/pics/b.png": image_bytes(30, 30),
        "__MACOSX/._train.jsonl": b"junk",
    })
    b = validate_path(z, workers=1)
    assert b.ok and sorted(b.reports) == ["sub/more.jsonl", "train.jsonl"]
    assert all(r.images == 1 for r in b.reports.values())


@pytest.mark.parametrize("entries, expected", [
    ({"../evil.jsonl": b"{}"}, "zip slip"),
    ({"/abs/evil.jsonl": b"{}"}, "zip slip"),
    ({"images/a.png": image_bytes()}, "no .jsonl"),
])
def test_bad_zips_are_archive_errors(tmp_path, entries, expected):
    b = validate_path(make_zip(tmp_path / "d.zip", entries))
    assert not b.ok and b.issues[0].code == "archive" and expected in b.issues[0].message


def test_zip_bomb_and_not_a_zip_and_empty(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", {"big.jsonl": b"\n" * (8 << 20)})
    b = validate_path(bomb)
    assert not b.ok and "zip bomb" in b.issues[0].message
    (tmp_path / "fake.zip").write_bytes(b"this is not a zip at all")
    assert "not a zip archive" in validate_path(tmp_path / "fake.zip").issues[0].message
    (tmp_path / "empty.zip").write_bytes(b"")
    assert "empty" in validate_path(tmp_path / "empty.zip").issues[0].message


def test_meta_file_checks_every_dataset(tmp_path):
    (tmp_path / "d1" / "images").mkdir(parents=True)
    (tmp_path / "d1" / "images" / "a.png").write_bytes(image_bytes())
    write_jsonl(tmp_path / "d1" / "train.jsonl", [sample(1, image="images/a.png"), sample(2, image="images/a.png",
                                                                                         answer="b")])
    write_jsonl(tmp_path / "d2.jsonl", [sample(1, image="missing.png")])
    meta = {
        "one": {"root": "d1", "annotation": "d1/train.jsonl", "data_augment": False, "repeat_time": 1, "length": 5},
        "two": {"root": ".", "annotation": "d2.jsonl", "data_augment": False, "repeat_time": 0.5, "length": 1,
                "max_dynamic_patch": 2},
        "gone": {"root": ".", "annotation": "nope.jsonl", "data_augment": False, "repeat_time": 1, "length": 1},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    b = validate_path(tmp_path / "meta.json", tmp_path, workers=1)
    assert not b.ok
    assert b.reports["one"].ok and not b.reports["two"].ok
    assert b.reports["two"].settings["max_dynamic_patch"] == 2
    kinds = {(i.code, i.sample_id) for i in b.issues}
    assert ("meta_path", "gone") in kinds and ("meta_length", "one") in kinds
    # allowed roots: everything outside is refused before any file is read
    b = validate_path(tmp_path / "meta.json", tmp_path, allowed_roots=[tmp_path / "d1"])
    assert {i.sample_id for i in b.issues if i.code == "meta_path"} == {"two", "gone"}


def test_bad_meta_lists_every_problem(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({
        "a": {"root": ".", "annotation": "a.jsonl", "repeat_time": 2.5},
        "b": {"root": 3, "annotation": "b.json", "length": -1},
    }))
    b = validate_path(tmp_path / "meta.json")
    msgs = [i.message for i in b.issues]
    assert len(msgs) == 4 and not b.ok
    assert any("whole number" in m for m in msgs) and any("'root'" in m for m in msgs)


def test_directory_and_missing_path(tmp_path):
    assert "is a directory" in validate_path(tmp_path).issues[0].message
    assert "not found" in validate_path(tmp_path / "x.jsonl").issues[0].message


def test_cli_exit_codes_and_report(tmp_path, dataset, model_dir):
    out, err = io.StringIO(), io.StringIO()
    rep = tmp_path / "report.json"
    code = run_validate(dataset, model=model_dir, max_seq_length=8192, report=rep, out=out, err=err, workers=1)
    assert code == 0, out.getvalue() + err.getvalue()
    assert out.getvalue().rstrip().endswith("OK")
    data = json.loads(rep.read_text())
    ds = data["datasets"]["train.jsonl"]
    assert data["ok"] and len(ds["per_sample"]) == 4
    assert ds["per_sample"][0]["tokens"] == ds["per_sample"][0]["text_tokens"] + ds["per_sample"][0]["image_tokens"]
    assert ds["settings"]["template"] == "internlm2-chat" and ds["settings"]["max_dynamic_patch"] == 6

    code = run_validate(dataset, model=model_dir, max_seq_length=300, out=out, err=err, workers=1)
    assert code == 1 and "too_long" in out.getvalue()
    assert run_validate(dataset, model=tmp_path / "no-model", out=out, err=err) == 2
    assert run_validate(dataset, template="nope", out=out, err=err) == 2


def test_cli_write_clean(tmp_path):
    ann = write_jsonl(tmp_path / "t.jsonl", [sample(1, image=None, question="q"), "bad line"])
    out, err = io.StringIO(), io.StringIO()
    assert run_validate(ann, write_clean=tmp_path / "clean.jsonl", out=out, err=err) == 1
    assert len((tmp_path / "clean.jsonl").read_text().splitlines()) == 1
    assert run_validate(tmp_path / "clean.jsonl", out=out, err=err) == 0


def test_typer_command(dataset, tmp_path):
    import typer
    from typer.testing import CliRunner

    from backend.cli.validate_cmd import validate

    app = typer.Typer()
    app.command("validate")(validate)
    app.command("other")(lambda: None)  # a group, as under `vlstudio datasets`
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(dataset), "--max-dynamic-patch", "4", "--workers", "1",
                             "--report", str(tmp_path / "r.json")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "r.json").read_text())["datasets"]["train.jsonl"]["settings"]["max_dynamic_patch"] == 4
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{"])
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 1 and "json" in res.output
    assert runner.invoke(app, ["validate", str(dataset), "--truncation", "chop"]).exit_code == 2
