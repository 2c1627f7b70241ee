"""The GPU suite: run on a machine with a CUDA GPU (``bench/gpu_session.sh`` runs it in one call).

It is not part of the normal run (``pytest -q`` leaves ``tests/gpu`` out; tests/conftest.py):
name it, ``pytest tests/gpu``. Without CUDA every test fails, not skips, unless
``VLSTUDIO_GPU_DRY_RUN=1`` (the CPU dry run of the session script), where the parts that need
CUDA are skipped with the reason and the rest runs on the CPU at tiny shapes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# the CPU suite's helpers (test_packing, test_training_invariance, triton_cpu) are reused here
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

DRY_RUN = os.environ.get("VLSTUDIO_GPU_DRY_RUN") == "1"
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda", 0) if CUDA else torch.device("cpu")


def gpu_only(what: str) -> None:
    """Skip in the CPU dry run (only there: without CUDA and without the dry run, the
    ``cuda`` fixture has already failed the test)."""
    if not CUDA:
        pytest.skip(f"CPU dry run: {what} needs CUDA")


@pytest.fixture(autouse=True)
def cuda():
    if not CUDA and not DRY_RUN:
        pytest.fail("tests/gpu needs a CUDA GPU (VLSTUDIO_GPU_DRY_RUN=1 runs what it can on the CPU)")
    yield DEVICE
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from worker.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("gpu") / "demo")
