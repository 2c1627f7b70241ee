"""Parameter counts by part come from the config's shapes: equal to the tensors of every genuine
tiny checkpoint, to the 2B model's tensor count, and to the published size of Qwen2.5-3B."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_configs import MINI_2B_V1_5, QWEN2_5_3B, internvl

from backend.core.model_shapes import ShapeError, shapes_from_config

DATA = Path(__file__).resolve().parents[1] / "data" / "families"
FIXTURES = ["internlm2", "phi3", "qwen2", "llama", "qwen3", "hf_qwen3"]


@pytest.mark.parametrize("name", FIXTURES)
def test_counts_equal_the_tensors_of_the_genuine_checkpoints(name):
    from safetensors import safe_open

    total = 0
    for f in (DATA / name).glob("*.safetensors"):
        with safe_open(str(f), "np") as h:
            total += sum(_numel(h.get_slice(k).get_shape()) for k in h.keys())
    shapes = shapes_from_config(json.loads((DATA / name / "config.json").read_text()))
    reference = json.loads((DATA / "reference" / f"{name}.json").read_text())
    assert shapes.total_params == total == reference["param_count"]
    assert shapes.family == ("qwen3" if name == "hf_qwen3" else name)
    assert shapes.image_tokens_per_tile == 4


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_released_sizes():
    two_b = shapes_from_config(MINI_2B_V1_5)
    assert two_b.total_params == 2_205_754_368  # the tensors of bench/convert.py's 2B-shaped checkpoint
    assert (two_b.vision_tokens_per_tile, two_b.image_tokens_per_tile) == (1025, 256)
    qwen = shapes_from_config(internvl(QWEN2_5_3B, "internvl2_5"))
    assert qwen.text_params == 3_085_938_688  # Qwen2.5-3B as published (tied embeddings)


def test_missing_size_is_named():
    cfg = internvl({k: v for k, v in QWEN2_5_3B.items() if k != "intermediate_size"}, "internvl2_5")
    with pytest.raises(ShapeError, match="llm_config.intermediate_size"):
        shapes_from_config(cfg)
