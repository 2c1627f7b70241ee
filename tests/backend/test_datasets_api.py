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
