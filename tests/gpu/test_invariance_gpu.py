"""The loss normalisation in bf16 on one GPU (the CPU suite proves it in fp32): one process x 2
samples and 1 x 1 with 2 accumulation steps give the same step-1 loss and grad_norm, step-2 loss
and eval loss, at ZeRO 0 (the Trainer's autocast), 1 and 3, within bf16 rounding, and equal the
fp32 golden values of tests/worker/test_training_invariance.py within it too. A split bug shows
as a factor (0.5 or 2). Every run uses torch's fused AdamW and compiles nothing. (Two GPUs:
bench/gpu_invariance.py.)"""

from __future__ import annotations

import pytest
import test_training_invariance as inv
from conftest import CUDA
from test_training_runs import metrics

STAGES = (0, 1, 3) if CUDA else (1,)
SPLITS = ("1x2", "1x1+accum2")
TOL = 2e-2 if CUDA else 1e-4


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("inv")
    inv.write_split(root / "data", "train", inv.TRAIN)
    inv.write_split(root / "data", "eval", inv.EVAL)
    specs = {(z, s): inv.write_run(root / f"z{z}_{s}", demo, root / "data", zero_stage=z, gpus=1 if CUDA else 0,
                                   **inv.SPLITS[s]) for z in STAGES for s in SPLITS}
    inv.launch(1, list(specs.values()), root / "launch.txt")
    logs = (root / "launch.txt").read_text()
    return {k: inv.figures(metrics(spec.parent)) for k, spec in specs.items()}, logs


def test_bf16_step_numbers_do_not_depend_on_the_split(runs):
    got, _ = runs
    for key, values in got.items():
        print(key, values)
        for name, want in inv.GOLDEN.items():
            assert values[name] == pytest.approx(want, rel=TOL), (key, name, values)
        other = got[(key[0], SPLITS[0])]
        for name in values:
            assert values[name] == pytest.approx(other[name], rel=TOL), (key, name)


def test_no_node_compiles_before_training(runs):
    _, logs = runs
    assert logs.count("optimizer: torch.optim.AdamW (fused)") == len(STAGES) * len(SPLITS)
    if CUDA:  # on the CPU DeepSpeed still builds its shared-memory collectives once
        assert "compiling" not in logs and "FusedAdam" not in logs and "fused_adam" not in logs
