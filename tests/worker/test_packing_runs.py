"""A packed run through the real launch path (torchrun, 2 CPU ranks, DeepSpeed ZeRO-3: parameters,
gradients and optimizer state partitioned): its metrics carry the packing and speed telemetry,
and a run cancelled with SIGTERM and resumed reproduces the uninterrupted run's loss curve and
weights (ZeRO-2 packed: test_training_runs.py's resume from a checkpoint)."""

from __future__ import annotations

import pytest
import torch
from test_training_runs import metrics, repeated_lines, state_dict, straight_then_cut_and_resume, write_data

# 8 samples (4 image, 4 text) pack into 3 packs of <= 900 tokens and 3 tiles: 2 steps per epoch of
# 2 ranks x 1 pack, so 6 steps are 3 epochs (each with its own order of the packs)
PACKED = {"zero_stage": 3, "max_steps": 6, "packing": True, "max_seq_length": 900, "max_tiles_per_pack": 3,
          "per_device_batch_size": 1, "seed": 5, "drop_path_rate": 0.1}


@pytest.fixture(scope="module")
def packed_runs(tmp_path_factory):
    from worker.demo_model import build_demo_model

    root = tmp_path_factory.mktemp("packed")
    model = build_demo_model(root / "demo")
    meta = write_data(root / "data", with_text=4)
    stopped_at, log, _ = straight_then_cut_and_resume(root, model, meta, PACKED)
    return root, stopped_at, log


@pytest.mark.slow
def test_packed_run_reports_packing_and_speed(packed_runs):
    root, _, log = packed_runs
    rows = metrics(root / "straight")
    assert [r["step"] for r in rows] == list(range(1, 7)) and rows[0]["total_steps"] == 6
    assert "8 samples into 3 packs of <= 900 tokens and <= 3 tiles" in log and "2 steps per epoch" in log
    assert "grad checkpointing vision off / LLM off" in log and "TFLOP/s per device" in log
    assert not repeated_lines(log)  # ZeRO-3 repeated a deprecation warning at every collective call
    for r in rows:
        assert 0.5 < r["packing_efficiency"] <= 1 and r["packing_efficiency"] == pytest.approx(1 - r["padding_ratio"])
        assert 0 <= r["dataloader_wait_fraction"] < 1 and 0 < r["mfu"] < 1


@pytest.mark.slow
def test_resumed_packed_run_equals_the_uninterrupted_one(packed_runs):
    root, stopped_at, _ = packed_runs
    assert 3 <= stopped_at < 6
    straight = {r["step"]: r["loss"] for r in metrics(root / "straight")}
    resumed = {r["step"]: r["loss"] for r in metrics(root / "cut")}
    assert sorted(resumed) == sorted(straight) == list(range(1, 7))
    # equal, not close: the resumed steps are the same float operations in the same order
    assert resumed == straight
    a, b = state_dict(root / "straight" / "final"), state_dict(root / "cut" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
