"""Every input bounded at the edge (issue 26): one set of field types on every route, no 500 for
any name or path, and work that grows with its input stops at the request's deadline or when
its client goes away (both databases where the API is in-process)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from backend.core import fields
from backend.services import dataset_views
from tests.backend.test_jobs_service import ds  # noqa: F401  # a registered demo dataset
from tests.conftest import free_port


def problems(r) -> dict[str, str]:
    assert r.status_code == 422, (r.status_code, r.text)
    return {e["field"]: e["message"] for e in r.json()["errors"]}


@pytest.mark.parametrize("value", [41, 2**31 - 2, 0])
def test_every_route_takes_the_same_tile_budget(api, ds, value):  # noqa: F811
    """The preview took max_dynamic_patch up to 2^31-1 (and never answered); now it refuses
    what training, the mixture, the evaluation and the dataset checks refuse."""
    r = api.get(f"/api/datasets/{ds}/samples/1", params={"model_id": 1, "max_dynamic_patch": value, "tiles": True})
    assert "query.max_dynamic_patch" in problems(r)
    r = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1, "hyperparameters": {"max_dynamic_patch": value}})
    assert "max_dynamic_patch" in problems(r)
    r = api.post("/api/jobs", json={"model_id": 1, "mixture": {"datasets": [
        {"dataset_id": ds, "max_dynamic_patch": value}]}})
    assert "body.mixture.datasets.0.max_dynamic_patch" in problems(r)
    r = api.post("/api/evaluations", json={"mixture": {"datasets": [{"dataset_id": ds, "max_dynamic_patch": value}]},
                                           "models": [{"model_id": 1}]})
    assert "body.mixture.datasets.0.max_dynamic_patch" in problems(r)
    r = api.post("/api/datasets/from-path", json={"root": "/nowhere", "annotation": "a.jsonl",
                                                  "max_dynamic_patch": value})
    assert "body.max_dynamic_patch" in problems(r)
    r = api.post("/api/meta", json={"datasets": [{"dataset_id": ds, "max_dynamic_patch": value}]})
    assert "body.datasets.0.max_dynamic_patch" in problems(r)
    assert api.get("/api/jobs").json() == []
    ok = api.get(f"/api/datasets/{ds}/samples/1", params={"model_id": 1, "max_dynamic_patch": fields.MAX_TILES,
                                                          "tiles": True})
    assert ok.status_code == 200 and ok.json()["settings"]["max_dynamic_patch"] == fields.MAX_TILES


def test_sequence_lengths_are_one_bound(api, ds):  # noqa: F811
    too_long = fields.MAX_SEQ_LENGTH + 1
    r = api.get(f"/api/datasets/{ds}/samples/1", params={"model_id": 1, "max_seq_length": too_long})
    assert "query.max_seq_length" in problems(r)
    r = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1, "hyperparameters": {"max_seq_length": too_long}})
    assert "max_seq_length" in problems(r)
    r = api.post("/api/datasets", data={"root": "/x", "annotation": "a.jsonl", "max_seq_length": str(too_long)})
    assert "body.max_seq_length" in problems(r)


def test_a_300_character_upload_name_is_refused_by_name(api, tmp_path):
    for name in ("a" * 300 + ".jsonl", "images/" + "b" * 300 + ".png"):
        r = api.post("/api/datasets", files=[("files", (name, b"data", "image/png")),
                                             ("files", ("ann.jsonl", b"{}\n", "text/plain"))])
        assert problems(r) == {"files": r.json()["detail"]}, r.text
        assert "file name" in r.json()["detail"]
    assert api.get("/api/datasets").json() == []
    staged = tmp_path / "data" / "datasets"
    assert not staged.exists() or not any(staged.iterdir())  # nothing half-registered


def test_nul_in_download_paths_is_a_422_naming_the_path(api, ds):  # noqa: F811
    for url in ("/api/jobs/1/files/spec.json%00.png", f"/api/datasets/{ds}/files/images/a%00.png"):
        r = api.get(url)
        assert "path.path" in problems(r), url
        assert "NUL" in r.json()["detail"]


@pytest.mark.parametrize("route", ["/api/models/import", "/api/models/inspect", "/api/benchmarks"])
def test_server_paths_must_be_absolute_and_free_of_nul(api, route, tmp_path):
    extra = {"name": "textvqa_val"} if route == "/api/benchmarks" else {}
    nul = api.post(route, json={"path": f"{tmp_path}/a\x00b", **extra})
    assert "NUL" in problems(nul)["body.path"]
    rel = api.post(route, json={"path": "checkpoints/InternVL2-1B", **extra})
    assert "relative" in problems(rel)["body.path"] and "absolute" in rel.json()["detail"]
    assert api.get("/api/models").json()[-1]["builtin"] is True  # nothing registered


def test_dataset_paths_and_names(api):
    r = api.post("/api/datasets/from-path", json={"root": "data/x", "annotation": "a\x00.jsonl", "name": "n" * 201})
    assert {"body.root", "body.annotation", "body.name"} <= set(problems(r))
    r = api.post("/api/datasets", data={"root": "relative", "annotation": "a.jsonl"})
    assert "relative" in problems(r)["body.root"]
    r = api.post("/api/datasets", data={"root": "/x", "annotation": "a.jsonl", "truncation": "sometimes"})
    assert "body.truncation" in problems(r)


def _slow_tiles(count: list[int], per_tile_s: float, most: int = 400):
    def tile_images(path, plan, image_size=448):  # noqa: ANN001, ANN202, ARG001
        from PIL import Image

        for _ in range(most):  # a pathological image: tiles without end (bounded here for the test's sake)
            time.sleep(per_tile_s)
            count[0] += 1
            yield Image.new("RGB", (image_size, image_size))
    return tile_images


def test_a_slow_preview_is_cut_at_its_deadline(api, ds, monkeypatch):  # noqa: F811
    from backend.settings import get_settings

    url, params = f"/api/datasets/{ds}/samples/1", {"model_id": 1, "tiles": True}
    monkeypatch.setattr(dataset_views, "tile_images", _slow_tiles([0], 0, most=2))
    t0 = time.monotonic()
    r = api.get(url, params=params)  # warm: the tokenizer is loaded once
    assert r.status_code == 200 and len(r.json()["images"][0]["tile_images"]) == 2
    t0 = time.monotonic()
    assert api.get(url, params=params).status_code == 200
    limit = max(1.0, 3 * (time.monotonic() - t0))  # a warm preview fits well inside it
    count = [0]
    monkeypatch.setattr(dataset_views, "tile_images", _slow_tiles(count, 0.05))
    monkeypatch.setattr(get_settings(), "request_deadline_seconds", limit)
    t0 = time.monotonic()
    r = api.get(url, params=params)
    assert r.status_code == 503 and "deadline" in r.json()["detail"] and r.headers["retry-after"], r.text[:300]
    assert count[0] >= 1  # the tiles were under way when the deadline came
    assert time.monotonic() - t0 < limit + 5 and count[0] < 400  # stopped, not run to the end (400 tiles, 20 s)


def test_a_preview_stops_when_its_client_goes_away(api, ds, monkeypatch):  # noqa: F811
    """Over a real socket (uvicorn): the client hangs up, the handler's work ends soon after."""
    import uvicorn

    from backend.api.app import create_app

    count = [0]
    monkeypatch.setattr(dataset_views, "tile_images", _slow_tiles(count, 0.05))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(run_startup=False), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        token = api.headers["Authorization"]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"GET /api/datasets/{ds}/samples/1?model_id=1&tiles=true HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: {token}\r\n\r\n".encode())
            deadline = time.monotonic() + 10
            while count[0] < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert count[0] >= 3  # the work is under way
        time.sleep(1.5)
        stopped_at = count[0]
        time.sleep(1.0)
        assert count[0] == stopped_at and stopped_at < 60, count  # 400 tiles (20 s) without the check
    finally:
        server.should_exit = True
        thread.join(10)
