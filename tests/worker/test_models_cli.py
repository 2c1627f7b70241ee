"""``vlstudio models import`` / ``export`` as a user runs them: a released-style original
checkpoint goes in, is registered, and comes back out in the original layout unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from convert_helpers import REMOTE_CODE, write_original
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[2]


def cli(data: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLSTUDIO_DATA_DIR": str(data)}
    for k in ("VLSTUDIO_DATABASE_URL", "VLSTUDIO_BROKER_URL"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "backend.cli", "models", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def tensors(folder: Path) -> dict:
    out = {}
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def test_import_register_export_round_trip(tmp_path):
    src = tmp_path / "Mini-InternVL-Chat-2B-V1-5"
    write_original(src, "internlm2")
    data = tmp_path / "data"

    r = cli(data, "import", str(src))
    assert r.returncode == 0, r.stderr
    assert "registered model 2 Mini-InternVL-Chat-2B-V1-5: internlm2, template internlm2-chat" in r.stdout
    listing = cli(data, "list").stdout
    assert "Mini-InternVL-Chat-2B-V1-5" in listing and "internvl-tiny-demo" in listing
    assert not (src / "EXECUTED").exists()  # the shipped remote code never ran

    r = cli(data, "import", str(src))  # same name again: refused, the first stays
    assert r.returncode == 1 and "already registered" in r.stderr

    out = tmp_path / "exported"
    r = cli(data, "export", "model:2", "--format", "original", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["format"] == "original"
    a, b = tensors(src), tensors(out)
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and bool((a[k] == b[k]).all()) for k in a)
    assert json.loads((out / "config.json").read_text())["auto_map"]
    assert all((out / name).exists() for name in REMOTE_CODE)


def test_bad_checkpoint_is_refused_and_nothing_registered(tmp_path):
    src = tmp_path / "old-model"
    write_original(src, "qwen2")
    cfg = json.loads((src / "config.json").read_text())
    cfg["ps_version"] = "v1"
    (src / "config.json").write_text(json.dumps(cfg))
    data = tmp_path / "data"
    r = cli(data, "import", str(src))
    assert r.returncode == 1 and "ps_version" in r.stderr
    assert "old-model" not in cli(data, "list").stdout
    assert not (data / "models" / "old-model").exists()
