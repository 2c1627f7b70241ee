"""POST /api/models/import: a released-style checkpoint on the server is converted and
registered; anything outside VLSTUDIO_DATA_ROOTS or broken is refused, nothing left behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))
from convert_helpers import write_original  # noqa: E402


@pytest.fixture
def shared(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "shared"
    root.mkdir()
    monkeypatch.setenv("VLSTUDIO_DATA_ROOTS", str(root))
    return root


def test_import_converts_and_registers(shared, api, tmp_path):
    write_original(shared / "Mini-InternVL-Chat-4B-V1-5", "phi3")
    r = api.post("/api/models/import", json={"path": str(shared / "Mini-InternVL-Chat-4B-V1-5")})
    assert r.status_code == 201, r.text
    m = r.json()
    assert (m["name"], m["family"], m["template"]) == ("Mini-InternVL-Chat-4B-V1-5", "phi3", "phi3-chat")
    assert m["info"]["param_count"] > 0 and m["info"]["source_format"] == "original"
    assert m["id"] in [x["id"] for x in api.get("/api/models").json()]
    assert (tmp_path / "data" / "models" / m["name"] / "config.json").exists()
    again = api.post("/api/models/import", json={"path": str(shared / "Mini-InternVL-Chat-4B-V1-5")})
    assert again.status_code == 409


def test_import_refuses_outside_roots_and_broken_checkpoints(shared, api, tmp_path):
    outside = tmp_path / "elsewhere"
    write_original(outside, "qwen2")
    r = api.post("/api/models/import", json={"path": str(outside)})
    assert r.status_code == 403 and "not under an allowed data folder" in r.json()["detail"]

    write_original(shared / "v1", "qwen2")
    cfg = json.loads((shared / "v1" / "config.json").read_text())
    cfg["ps_version"] = "v1"
    (shared / "v1" / "config.json").write_text(json.dumps(cfg))
    r = api.post("/api/models/import", json={"path": str(shared / "v1")})
    assert r.status_code == 422 and "ps_version" in r.json()["detail"]
    assert [m["name"] for m in api.get("/api/models").json()] == ["internvl-tiny-demo"]
    assert not (tmp_path / "data" / "models" / "v1").exists()
