"""Datasets through the product: the ``vlstudio datasets validate`` command, the upload variants,
the report, sample preview, file serving and the meta file (issue 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from backend.core.demo_data import write_folder

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.cli", "datasets", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_validate_clean_and_broken(tmp_path):
    ann = write_folder(tmp_path / "ok", n=6)
    ok = cli("validate", str(ann), "--report", str(tmp_path / "ok.json"), "--workers", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK" in ok.stdout
    data = json.loads((tmp_path / "ok.json").read_text())
    (rep,) = data["datasets"].values()
    assert data["ok"] is True and rep["samples"] == 6 and len(rep["per_sample"]) == 6

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "conversations": [{"from": "gpt", "value": "hi"}]}\nnot json\n')
    r = cli("validate", str(bad), "--root", str(tmp_path), "--report", str(tmp_path / "bad.json"))
    assert r.returncode == 1 and "FAILED" in r.stdout
    issues = json.loads((tmp_path / "bad.json").read_text())["datasets"]
    (rep,) = issues.values()
    assert {(i["line"], i["code"]) for i in rep["issues"] if i["severity"] == "error"} == {(1, "role"), (2, "json")}


def test_cli_validate_bad_model_folder_is_usage_error(tmp_path):
    ann = write_folder(tmp_path / "ok", n=2)
    r = cli("validate", str(ann), "--model", str(tmp_path / "nope"), "--max-seq-length", "64",
            "--max-dynamic-patch", "2")
    assert r.returncode == 2 and "error:" in r.stderr


# --- the API -------------------------------------------------------------------------------

import io  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402

from tests.backend.test_api import demo_files, zip_bytes  # noqa: E402


def zip_with(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for e in entries:
            if isinstance(e, zipfile.ZipInfo):
                zf.writestr(e, b"/etc/passwd")
            else:
                zf.writestr(*e)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data: never decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def one_image(image: bytes, name: str = "images/x.png") -> dict:
    rec = {"id": 1, "image": name, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                      {"from": "gpt", "value": "red"}]}
    return {name: image, "ann.jsonl": json.dumps(rec) + "\n"}


def nothing_left(api, tmp_path) -> None:
    assert api.get("/api/health").json()["status"] == "ok"
    assert api.get("/api/datasets").json() == []
    assert list((tmp_path / "data" / "datasets").iterdir()) == []
    assert list((tmp_path / "data" / "uploads").iterdir()) == []


def post_zip(api, data: bytes, **form):
    return api.post("/api/datasets", files={"file": ("ds.zip", data, "application/zip")},
                    data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in form.items()})


_real_png = [d for n, d in demo_files(1).items() if n.endswith(".png")][0]
BAD = {
    "empty file": (b"", "empty file"),
    "not a zip": (b"this is not a zip", "not a zip"),
    "zip slip": (zip_with([("../evil.jsonl", "{}")]), "zip slip"),
    "absolute path": (zip_with([("/tmp/evil.jsonl", "{}")]), "zip slip"),
    "zip bomb": (zip_with([("ann.jsonl", "{}\n"), ("zeros.bin", b"\0" * (8 << 20))]), "zip bomb"),
    "invalid utf-8": (zip_with([("ann.jsonl", b'{"id": "\xff\xfe", "conversations": []}\n')]), "UTF-8"),
    "truncated image": (zip_bytes(one_image(_real_png[: len(_real_png) // 2])), "image_unreadable"),
    "not an image": (zip_bytes(one_image(b"GIF89a but not really an image at all")), "image_unreadable"),
    "30000x30000": (zip_bytes(one_image(png_header(30000, 30000))), "pixels"),
}
_link = zipfile.ZipInfo("images/link.png")
_link.external_attr = (stat.S_IFLNK | 0o777) << 16
BAD["symlink entry"] = (zip_with([("ann.jsonl", "{}\n"), _link]), "symbolic link")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_clear_4xx_and_leaves_nothing(api, tmp_path, case):
    payload, fragment = BAD[case]
    r = post_zip(api, payload)
    assert r.status_code == 422, r.text
    body = r.json()
    assert fragment in body["detail"] + json.dumps(body.get("errors", [])), body
    nothing_left(api, tmp_path)


def test_fifty_megabyte_line_is_refused(api, tmp_path):
    rec = {"id": 1, "conversations": [{"from": "human", "value": "x" * (50 << 20)}, {"from": "gpt", "value": "y"}]}
    r = post_zip(api, zip_bytes({"ann.jsonl": json.dumps(rec) + "\n"}), background=False)
    assert r.status_code == 422
    (err,) = r.json()["errors"]
    assert (err["code"], err["line"], err["file"]) == ("line_too_long", 1, "ann.jsonl")
    nothing_left(api, tmp_path)


def test_every_error_of_a_small_upload_is_listed(api, tmp_path):
    files = demo_files(2)
    files["ann.jsonl"] += "{broken\n" * 30
    r = post_zip(api, zip_bytes(files))
    assert r.status_code == 422
    assert [e["line"] for e in r.json()["errors"]] == list(range(3, 33))
    assert "30 error(s)" in r.json()["detail"]
    nothing_left(api, tmp_path)


def test_bom_and_crlf_are_accepted_with_notes(api):
    files = demo_files(3)
    files["ann.jsonl"] = "\ufeff" + files["ann.jsonl"].replace("\n", "\r\n")
    r = post_zip(api, zip_bytes(files))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["num_samples"], ds["status"]) == (3, "ready")
    counts = api.get(f"/api/datasets/{ds['id']}/report").json()["counts"]
    assert counts.get("warning:bom") == 1 and counts.get("info:crlf") == 1


def test_zip_with_two_annotations_registers_two_datasets(api):
    files = demo_files(4)
    lines = files.pop("ann.jsonl").splitlines(keepends=True)
    files["a.jsonl"], files["b.jsonl"] = "".join(lines[:1]), "".join(lines[1:])
    r = post_zip(api, zip_bytes(files), name="mix")
    assert r.status_code == 201, r.text
    first = r.json()
    assert len(first["bundle"]) == 2
    rows = {d["name"]: d["num_samples"] for d in api.get("/api/datasets").json()}
    assert rows == {"mix/a": 1, "mix/b": 3}


def test_image_files_plus_one_jsonl(api, tmp_path):
    files = demo_files(2)
    parts = [("files", (n, d if isinstance(d, bytes) else d.encode(), "application/octet-stream"))
             for n, d in files.items()]
    r = api.post("/api/datasets", files=parts)
    assert r.status_code == 201, r.text
    assert r.json()["num_samples"] == 2
    bad = [("files", ("../x.png", b"x", "image/png")), ("files", ("ann.jsonl", b"{}\n", "text/plain"))]
    r = api.post("/api/datasets", files=bad)
    assert r.status_code == 422 and "not a safe file name" in r.json()["detail"]
    two = [("files", ("a.jsonl", b"{}\n", "text/plain")), ("files", ("b.jsonl", b"{}\n", "text/plain"))]
    r = api.post("/api/datasets", files=two)
    assert r.status_code == 422 and "exactly one .jsonl" in r.json()["detail"]
    assert len(api.get("/api/datasets").json()) == 1
    assert [p.name for p in (tmp_path / "data" / "datasets").iterdir()] == [str(r_id["id"]) for r_id in
                                                                             api.get("/api/datasets").json()]


@pytest.fixture
def shared(tmp_path, monkeypatch) -> Path:
    """A data root the administrator allows, holding the demo dataset."""
    from backend.settings import get_settings

    root = tmp_path / "shared"
    write_folder(root / "demo", n=3)
    monkeypatch.setenv("VLSTUDIO_DATA_ROOTS", str(root))
    get_settings.cache_clear()
    return root


def test_server_side_path_only_under_data_roots(api, shared, tmp_path):
    r = api.post("/api/datasets", data={"root": str(shared / "demo"), "annotation": "annotations.jsonl"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["num_samples"] == 3
    assert api.get(f"/api/datasets/{ds['id']}/files/images/000.png").status_code in (200, 404)
    outside = tmp_path / "elsewhere"
    write_folder(outside, n=1)
    r = api.post("/api/datasets/from-path", json={"root": str(outside), "annotation": "annotations.jsonl"})
    assert r.status_code == 403 and "not under an allowed data folder" in r.json()["detail"]
    (shared / "escape").symlink_to(outside)
    r = api.post("/api/datasets/from-path", json={"root": str(shared / "escape"), "annotation": "annotations.jsonl"})
    assert r.status_code == 403
    r = api.post("/api/datasets/from-path", json={"root": str(shared / "demo"), "annotation": "nope.jsonl"})
    assert r.status_code == 422 and "no such file" in r.json()["detail"]
    assert len(api.get("/api/datasets").json()) == 1


def test_image_symlink_out_of_root_is_an_error(api, shared, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes((shared / "demo" / "images").iterdir().__next__().read_bytes())
    ann = shared / "demo" / "annotations.jsonl"
    first = json.loads(ann.read_text().splitlines()[0])
    (shared / "demo" / "images" / "link.png").symlink_to(outside)
    first["image"] = "images/link.png"
    ann.write_text(json.dumps(first) + "\n")
    r = api.post("/api/datasets/from-path", json={"root": str(shared / "demo"), "annotation": str(ann)})
    assert r.status_code == 422
    assert [e["code"] for e in r.json()["errors"]] == ["image_path"]
    assert api.get("/api/datasets").json() == []


def test_drop_bad_lines_registers_a_clean_copy(api, tmp_path):
    files = demo_files(4)
    lines = files["ann.jsonl"].splitlines(keepends=True)
    lines[1] = "{broken\n"
    files["ann.jsonl"] = "".join(lines)
    assert post_zip(api, zip_bytes(files)).status_code == 422
    r = post_zip(api, zip_bytes(files), drop_bad_lines=True)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["num_samples"] == 3
    report = api.get(f"/api/datasets/{ds['id']}/report").json()
    assert report["dropped_lines"] == 1 and report["counts"]["error:json"] == 1
    folder = tmp_path / "data" / "datasets" / str(ds["id"])
    assert (folder / "ann.jsonl").read_text() == "".join(lines)  # the original, untouched
    assert len((folder / report["clean_annotation"]).read_text().splitlines()) == 3


def test_line_numbers_are_the_uploaded_files_in_report_and_preview(api, tmp_path):
    """Issue 25: the preview counted the lines of the stored file (after the drops and the
    split). Every line number is the uploaded file's: the report's errors, and the preview of
    each line shows that line's sample, in the training or the validation part, or says that
    it was dropped."""
    files = demo_files(10)
    lines = files["ann.jsonl"].splitlines(keepends=True)
    lines[1] = "{broken\n"  # line 2
    lines[4] = json.dumps({"id": "bad", "conversations": [{"from": "gpt", "value": "hi"}]}) + "\n"  # line 5
    lines.insert(6, "\n")  # line 7: blank
    files["ann.jsonl"] = "".join(lines)
    ds = post_zip(api, zip_bytes(files), drop_bad_lines=True, val_fraction=0.3).json()
    assert ds["num_samples"] + ds["num_val_samples"] == 8, ds
    report = api.get(f"/api/datasets/{ds['id']}/report").json()
    assert sorted(i["line"] for i in report["issues"] if i["severity"] == "error") == [2, 5]
    parts = set()
    for n, raw in enumerate(lines, 1):
        r = api.get(f"/api/datasets/{ds['id']}/samples/{n}")
        if n in (2, 5, 7):
            assert r.status_code == 422 and f"line {n} of the uploaded file is not in the dataset" in r.text, r.text
            continue
        assert r.status_code == 200, (n, r.text)
        pv = r.json()
        assert pv["line"] == n and pv["id"] == json.loads(raw)["id"], (n, pv["id"], pv["part"])
        parts.add(pv["part"])
    assert parts == {"train", "validation"}
    r = api.get(f"/api/datasets/{ds['id']}/samples/{len(lines) + 1}")
    assert r.status_code == 422


def test_model_without_tokenizer_skips_token_checks_with_a_note(api):
    r = post_zip(api, zip_bytes(demo_files(2)), model_id=1, max_seq_length=64, max_dynamic_patch=2)
    assert r.status_code == 422  # image tokens are still counted without a tokenizer
    assert {e["code"] for e in r.json()["errors"]} == {"too_long"}
    r = post_zip(api, zip_bytes(demo_files(2)), model_id=1, max_seq_length=4096, max_dynamic_patch=2)
    assert r.status_code == 201, r.text
    report = api.get(f"/api/datasets/{r.json()['id']}/report?per_sample_limit=5").json()
    assert report["settings"]["max_dynamic_patch"] == 2
    assert len(report["per_sample"]) == 2
    codes = {n["code"] for n in report["notes"]} | set(report["by_kind"]["info"])
    assert "no_tokenizer" in codes
    assert post_zip(api, zip_bytes(demo_files(1)), model_id=999).status_code == 404


def wait_status(api, ds_id: int, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ds = api.get(f"/api/datasets/{ds_id}").json()
        if ds["status"] != "validating":
            return ds
        time.sleep(0.1)
    raise AssertionError(f"dataset {ds_id} still validating")


def test_background_validation_ready_failed_and_cancelled(api, tmp_path):
    r = post_zip(api, zip_bytes(demo_files(3)), background=True)
    assert r.status_code == 202 and r.json()["status"] == "validating"
    ds = wait_status(api, r.json()["id"])
    assert (ds["status"], ds["num_samples"], ds["progress"]) == ("ready", 3, 1.0)
    assert api.post(f"/api/datasets/{ds['id']}/cancel-validation").status_code == 409

    bad = demo_files(2)
    bad["ann.jsonl"] += "{oops\n"
    r = post_zip(api, zip_bytes(bad), background=True)
    failed = wait_status(api, r.json()["id"])
    assert failed["status"] == "failed" and failed["num_samples"] == 0
    assert [e["line"] for e in api.get(f"/api/datasets/{failed['id']}/report").json()["errors"]] == [3]
    assert not (tmp_path / "data" / "datasets" / str(failed["id"])).exists()
    assert api.get(f"/api/datasets/{failed['id']}/samples/1").status_code == 409
    assert api.post("/api/meta", json={"datasets": [{"dataset_id": failed["id"]}]}).status_code == 409

    text = "".join(json.dumps({"id": i, "conversations": [{"from": "human", "value": "hi " * 20},
                                                          {"from": "gpt", "value": "yo"}]}) + "\n"
                   for i in range(60000))
    r = post_zip(api, zip_bytes({"big.jsonl": text}))  # over 2 MiB: background by size
    assert r.status_code == 202
    assert api.post(f"/api/datasets/{r.json()['id']}/cancel-validation").json()["status"] == "cancelled"
    ds = wait_status(api, r.json()["id"])
    time.sleep(1)
    assert api.get(f"/api/datasets/{ds['id']}").json()["status"] == "cancelled"
    for _ in range(100):  # the thread removes the files once the engine stops
        if not (tmp_path / "data" / "datasets" / str(ds["id"])).exists():
            break
        time.sleep(0.2)
    assert not (tmp_path / "data" / "datasets" / str(ds["id"])).exists()


def test_sample_preview_files_and_report(api, tmp_path):
    ds = post_zip(api, zip_bytes(demo_files(3))).json()
    p = api.get(f"/api/datasets/{ds['id']}/samples/2?max_dynamic_patch=4&tiles=true")
    assert p.status_code == 200, p.text
    prev = p.json()
    (img,) = prev["images"]
    assert prev["template"] == "internlm2-chat" and prev["line"] == 2
    assert img["max_tiles"] == 4 and img["tiles"] == len(img["tile_images"]) and img["grid"]
    assert img["tile_images"][0].startswith("data:image/jpeg;base64,")
    assert any(seg["trained"] for seg in prev["segments"]) and "<|im_start|>" in prev["text"]
    served = api.get(img["url"])
    assert served.status_code == 200 and served.content[:4] == b"\x89PNG"
    for bad in ("../../vlstudio.db", "%2e%2e/%2e%2e/vlstudio.db", "ann.jsonl", "images/none.png"):
        r = api.get(f"/api/datasets/{ds['id']}/files/{bad}")
        assert r.status_code in (404, 422) and b"SQLite" not in r.content, bad
    assert api.get(f"/api/datasets/{ds['id']}/samples/99").status_code == 422
    report = api.get(f"/api/datasets/{ds['id']}/report").json()
    assert report["ok"] is True and report["stats"]["samples"] == 3
    assert api.get("/api/datasets/999/report").status_code == 404


def test_meta_file_from_datasets_and_a_mixture(api):
    a = post_zip(api, zip_bytes(demo_files(4)), name="shapes a").json()
    b = post_zip(api, zip_bytes(demo_files(2)), name="b").json()
    mixture = {"sharegpt4v": {"root": "playground/data/", "annotation": "playground/sharegpt4v.jsonl",
                              "data_augment": False, "repeat_time": 1, "length": 1000}}
    body = {"datasets": [{"dataset_id": a["id"], "repeat_time": 0.5, "data_augment": True, "max_dynamic_patch": 6},
                         {"dataset_id": b["id"], "repeat_time": 3}], "mixture": mixture}
    r = api.post("/api/meta", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    ds_a, ds_b = (api.get(f"/api/datasets/{x['id']}").json() for x in (a, b))
    assert list(out["meta"]) == ["shapes_a", "b", "sharegpt4v"]
    assert out["meta"]["shapes_a"] == {"root": out["meta"]["shapes_a"]["root"],
                                       "annotation": out["meta"]["shapes_a"]["annotation"],
                                       "data_augment": True, "repeat_time": 0.5, "length": 4, "max_dynamic_patch": 6}
    assert out["meta"]["b"]["repeat_time"] == 3 and out["meta"]["sharegpt4v"] == mixture["sharegpt4v"]
    assert [d["effective"] for d in out["summary"]["datasets"]] == [2, 6, 1000]
    assert out["summary"]["effective"] == 1008 and ds_a["num_samples"] == 4 and ds_b["num_samples"] == 2
    dl = api.post("/api/meta?download=1", json=body)
    assert "attachment" in dl.headers["content-disposition"] and json.loads(dl.text) == out["meta"]

    for bad, fragment in [({"datasets": [{"dataset_id": a["id"], "repeat_time": 2.5}]}, "repeat_time"),
                          ({"datasets": [{"dataset_id": a["id"]}, {"dataset_id": a["id"], "name": "x"}]},
                           "already listed"),
                          ({"mixture": {"x": {"root": "r"}}}, "annotation"),
                          ({"datasets": []}, "at least one")]:
        r = api.post("/api/meta", json=bad)
        assert r.status_code == 422 and fragment in json.dumps(r.json()), (bad, r.text)
    assert api.post("/api/meta", json={"datasets": [{"dataset_id": 999}]}).status_code == 404


def test_model_tokenizer_counts_tokens_in_checks_and_preview(api, tmp_path):
    from backend.db.session import session_scope
    from backend.services.models import register_model
    from tests.core.conftest import build_tokenizer

    folder = tmp_path / "tiny-model"
    folder.mkdir()
    build_tokenizer().backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "internvl_chat", "template": "internlm2-chat", "max_dynamic_patch": 6,
        "use_thumbnail": True, "dynamic_image_size": True, "force_image_size": 448, "downsample_ratio": 0.5,
        "vision_config": {"patch_size": 14, "image_size": 448}, "llm_config": {"architectures": ["InternLM2ForCausalLM"]}}))
    with session_scope() as s:
        model_id = register_model(s, name="tok-model", path=str(folder), family="internvl", template="internlm2-chat",
                                  info={}).id
    files = demo_files(2)
    r = post_zip(api, zip_bytes(files), model_id=model_id, max_dynamic_patch=1, max_seq_length=258)
    assert r.status_code == 422 and {e["code"] for e in r.json()["errors"]} == {"too_long"}
    ds = post_zip(api, zip_bytes(files), model_id=model_id, max_dynamic_patch=1, max_seq_length=2000).json()
    report = api.get(f"/api/datasets/{ds['id']}/report?per_sample_limit=2").json()
    assert report["notes"] == [] and report["stats"]["tokens"]["samples"] == 2
    assert all(row["text_tokens"] > 0 and row["image_tokens"] == 258 for row in report["per_sample"]), json.dumps(report["per_sample"])
    prev = api.get(f"/api/datasets/{ds['id']}/samples/1?model_id={model_id}&max_dynamic_patch=1").json()
    counts = prev["tokens"]["counts"]
    assert counts["image"] == 258 and counts["total"] == counts["text"] + 258  # 256 + <img> </img> and counts["trained"] > 0


def test_background_validation_keeps_the_validation_split(api):
    files = demo_files(4)
    lines = files["ann.jsonl"].splitlines(keepends=True)
    files["ann.jsonl"] = "".join(lines[:3])
    r = api.post("/api/datasets", files={"file": ("ds.zip", zip_bytes(files), "application/zip"),
                                         "validation": ("val.jsonl", lines[3].encode(), "text/plain")},
                 data={"background": "true"})
    assert r.status_code == 202, r.text
    ds = wait_status(api, r.json()["id"])
    assert (ds["status"], ds["num_samples"], ds["num_val_samples"]) == ("ready", 3, 1)


def test_errors_name_the_upload_not_its_temporary_file(api):
    r = api.post("/api/datasets", files={"file": ("holiday-photos.zip", b"PK not really", "application/zip")})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "holiday-photos.zip: not a zip archive"


def test_a_refusal_points_at_what_the_studio_offers(api):
    """The rejected upload's message names the switch the Datasets page has, and JSON errors that
    end in "at" (json's "Invalid control character at") are not doubled."""
    r = post_zip(api, zip_bytes({"ann.jsonl": '{"id": "a\tb"}\n'}))
    assert r.status_code == 422, r.text
    body = r.json()
    assert "Drop the lines with errors" in body["detail"], body["detail"]
    messages = [e["message"] for e in body["errors"]]
    assert any("Invalid control character at column" in m for m in messages), messages
    assert not any("at at" in m for m in messages), messages


def shaped_zip(n: int, width: int, height: int) -> bytes:
    """``n`` good lines, each with one ``width`` x ``height`` image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    files = {f"images/{i}.png": buf.getvalue() for i in range(n)}
    files["ann.jsonl"] = "".join(json.dumps({"id": i, "image": f"images/{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "red"}]}) + "\n"
        for i in range(n))
    return zip_bytes(files)


def test_token_check_uses_the_models_and_presets_tiling(api):
    """Issue 25: the built-in model allows 6 tiles and the demo preset trains with 2; a 224x160 line
    is 1 tile in that run (258 image tokens). The check cut it at 12 tiles + thumbnail (3330 tokens)
    and refused every line at max_seq_length 2048. Now: the preset's tiling, else the model's (7 tiles
    here: 1794), else vlstudio's default with no model; the message says which."""
    demo = next(m for m in api.get("/api/models").json() if m["name"] == "internvl-tiny-demo")
    data = shaped_zip(3, 224, 160)
    r = post_zip(api, data, model_id=demo["id"], preset="demo", max_seq_length=2048)
    assert r.status_code == 201, r.text
    first = r.json()["id"]
    report = api.get(f"/api/datasets/{first}/report?per_sample_limit=3").json()
    assert report["settings"]["max_dynamic_patch"] == 2 and report["settings"]["tiling_source"] == "from preset 'demo'"
    assert [row["tiles"] for row in report["per_sample"]] == [[1]] * 3
    # the model alone: its own 6 tiles, 3x2 + thumbnail for this shape, still under 2048
    r = post_zip(api, data, model_id=demo["id"], max_seq_length=2048)
    assert r.status_code == 201, r.text
    report = api.get(f"/api/datasets/{r.json()['id']}/report?per_sample_limit=1").json()
    assert report["settings"]["max_dynamic_patch"] == 6 and report["per_sample"][0]["image_tokens"] == 7 * 256 + 2
    # over the limit: the message names the tile budget and where it came from
    r = post_zip(api, data, model_id=demo["id"], max_seq_length=1024)
    assert r.status_code == 422
    (err,) = {e["message"] for e in r.json()["errors"]}
    assert err == ("the image tokens alone (1794, 7 tiles at max_dynamic_patch 6, model 'internvl-tiny-demo''s own) "
                   "exceed max_seq_length 1024"), err
    r = post_zip(api, data, model_id=demo["id"], preset="2b-full", max_seq_length=2048)
    assert r.status_code == 422 and "13 tiles at max_dynamic_patch 12, from preset '2b-full'" in r.text, r.text
    assert post_zip(api, data, model_id=demo["id"], preset="nope").status_code == 422
    # no model chosen: vlstudio's default tiling, said as such
    r = post_zip(api, data, max_seq_length=2048)
    assert r.status_code == 422, r.text
    assert "13 tiles at max_dynamic_patch 12, vlstudio's default, no model chosen" in r.text, r.text
    # the preview cuts the image as the check did
    preview = api.get(f"/api/datasets/{first}/samples/1", params={"model_id": demo["id"], "preset": "demo"}).json()
    assert preview["settings"]["max_dynamic_patch"] == 2 and preview["images"][0]["tiles"] == 1
    assert preview["settings"]["tiling_source"] == "from preset 'demo'"
