"""Eval loss on the held-out split during training, through the real torchrun + DeepSpeed
path: rows with ``eval_loss`` land in metrics.jsonl at the chosen interval."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from backend.core.demo_data import write_folder
from backend.core.presets import resolve
from backend.core.spec import TrainingSpec
from worker.demo_model import build_demo_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_eval_loss_every_n_steps(tmp_path):
    model = build_demo_model(tmp_path / "model")
    train = write_folder(tmp_path / "train", n=8, seed=1)
    val = write_folder(tmp_path / "val", n=4, seed=2)
    for name, root, ann in (("meta", tmp_path / "train", train), ("eval_meta", tmp_path / "val", val)):
        (tmp_path / f"{name}.json").write_text(json.dumps({name: {"root": str(root), "annotation": str(ann)}}))
    hyper = resolve("demo", {"max_steps": 4, "eval_steps": 2, "per_device_batch_size": 2})
    spec = TrainingSpec(job_id=1, model_path=str(model), template="internlm2-chat",
                        meta_path=str(tmp_path / "meta.json"), eval_meta_path=str(tmp_path / "eval_meta.json"),
                        output_dir=str(tmp_path / "run"), hyper=hyper)
    (tmp_path / "run").mkdir()
    spec.write(tmp_path / "run" / "spec.json")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                        "worker.training.train", "--spec", str(tmp_path / "run" / "spec.json")],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "eval_loss" in row]
    assert [row["step"] for row in evals] == [2, 4]
    assert all(math.isfinite(row["eval_loss"]) and row["eval_loss"] > 0 for row in evals)
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4]
    assert "validation: 4 samples, eval loss every 2 steps" in r.stdout
