"""A checkpoint folder described before any conversion (``vlstudio models info``, ``POST
/api/models/inspect``, the Models page): format, family, template, parameters by part, tiling.
An imported model keeps its shapes, so its memory estimate does not depend on its name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backend.core.model_summary import summarize

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "families"


@pytest.mark.parametrize("name, family, template", [
    ("internlm2", "internlm2", "internlm2-chat"), ("phi3", "phi3", "phi3-chat"), ("qwen2", "qwen2", "internvl2_5"),
    ("llama", "llama", "Hermes-2"), ("qwen3", "qwen3", "internvl2_5"), ("hf_qwen3", "qwen3", "tokenizer")])
def test_summary_of_every_genuine_checkpoint(name, family, template):
    s = summarize(DATA / name)
    facts = json.loads((DATA / "reference" / f"{name}.json").read_text("utf-8"))
    assert (s["family"], s["template"], s["format"]) == (family, template, "hf" if name.startswith("hf") else
                                                         "original")
    p = s["parameters"]
    assert p["total"] == p["vision"] + p["projector"] + p["language_model"] == facts["param_count"]
    assert (s["tiling"]["image_size"], s["tiling"]["tokens_per_tile"], s["tiling"]["max_dynamic_patch"]) == (16, 4, 12)


def test_cli_prints_the_facts(tmp_path):
    env = {**os.environ, "VLSTUDIO_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "backend.cli", "models", "info", str(DATA / "phi3")], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "family      phi3: Phi3ForCausalLM, runs as phi3" in out.stdout
    assert "parameters  25,280 = vision 5,584 + projector 1,440 + language model 18,256" in out.stdout
    assert "tiling      16 px tiles, 4 tokens per tile, 1..12 tiles, thumbnail on" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "backend.cli", "models", "info", str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no config.json" in bad.stderr


def test_inspect_api_and_page(shared, api):
    from ui.pages.models import summary_html

    shutil.copytree(DATA / "qwen3", shared / "InternVL3_5-tiny")
    r = api.post("/api/models/inspect", json={"path": str(shared / "InternVL3_5-tiny")})
    assert r.status_code == 200, r.text
    assert r.json() == summarize(shared / "InternVL3_5-tiny")
    html = summary_html(r.json())
    assert "qwen3" in html and "internvl2_5" in html and "17,824" in html and "16 px tiles" in html
    assert api.post("/api/models/inspect", json={"path": str(DATA / "qwen3")}).status_code == 403
    (shared / "empty").mkdir()
    r = api.post("/api/models/inspect", json={"path": str(shared / "empty")})
    assert r.status_code == 422 and "no config.json" in r.json()["detail"]


@pytest.fixture
def import_runner(shared, api):
    """A worker's import runner, in this process (imports run on the workers)."""
    from worker.model_imports import ImportRunner

    runner = ImportRunner("test-worker")
    runner.start()
    yield runner
    runner.stop()


def test_imported_model_under_any_name_gets_its_estimate(shared, api, import_runner):
    shutil.copytree(DATA / "qwen2", shared / "src")
    r = api.post("/api/models/import", json={"path": str(shared / "src"), "name": "whatever-i-like"})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["info"]["shapes"]["total_params"] == 21632 and m["info"]["shapes"]["family"] == "qwen2"
    body = {"dataset_id": 1, "model_id": m["id"], "preset": "2b-full",
            "hyperparameters": {"gpus": 1, "nproc_per_node": 1}}
    est = api.post("/api/jobs/estimate", json=body).json()["estimate"]
    assert est["assumptions"]["total_params"] == 21632
