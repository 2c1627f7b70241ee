"""The GPU-memory estimate (docs/jobs.md): each knob moves the part of the formula it should, and
the architecture comes from the model's real shapes, never from its name."""

from __future__ import annotations

import json

from model_configs import INTERNVL2_5_4B, MINI_2B_V1_5

from backend.core.model_shapes import shapes_from_config
from backend.core.presets import resolve
from backend.services import memory

ARCH = memory.Arch.from_shapes(shapes_from_config(MINI_2B_V1_5).to_dict())


def est(**overrides) -> dict:
    return memory.estimate(ARCH, resolve("2b-full", overrides))


def test_zero_stages_shard_what_they_should():
    z1, z2, z3 = est(zero_stage=1), est(zero_stage=2), est(zero_stage=3)
    n = z1["devices"]
    assert n == 8
    assert z1["parts_gib"]["optimizer"] == z2["parts_gib"]["optimizer"] == z3["parts_gib"]["optimizer"]
    assert z2["parts_gib"]["gradients"] == round(z1["parts_gib"]["gradients"] / n, 2)
    assert z3["parts_gib"]["weights"] == round(z1["parts_gib"]["weights"] / n, 2)
    assert z1["per_device_gib"] > z2["per_device_gib"] > z3["per_device_gib"]
    assert z1["exact_gib"] < z1["per_device_gib"]


def test_lora_batch_tiles_and_checkpointing():
    full, lora = est(), est(freeze_llm=True, use_llm_lora=16)
    assert lora["assumptions"]["trainable_params"] < full["assumptions"]["trainable_params"] / 5
    assert lora["per_device_gib"] < full["per_device_gib"]
    assert est(per_device_batch_size=8)["parts_gib"]["activations"] == 2 * full["parts_gib"]["activations"]
    assert est(max_dynamic_patch=4)["parts_gib"]["activations"] < full["parts_gib"]["activations"]
    assert est(grad_checkpoint=False)["parts_gib"]["activations"] > 3 * full["parts_gib"]["activations"]


def test_renamed_model_gets_its_estimate_from_its_shapes(tmp_path):
    """The name plays no part: recorded shapes, else the folder's config.json, decide."""
    info = {"shapes": shapes_from_config(MINI_2B_V1_5).to_dict()}
    assert memory.arch_for(info, None) == ARCH
    folder = tmp_path / "my-renamed-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(INTERNVL2_5_4B))
    arch = memory.arch_for({}, str(folder))
    # InternVL2_5-4B is a Qwen2.5-3B model: its numbers, not Phi-3's (3072 wide, 32064 tokens)
    assert (arch.llm_hidden, arch.llm_layers, arch.vocab) == (2048, 36, 151674)
    assert memory.arch_for({}, str(tmp_path / "nowhere")) is None
    custom = {"vit_params": 1, "vit_hidden": 8, "vit_layers": 1, "mlp_params": 1, "llm_params": 1,
              "llm_hidden": 8, "llm_layers": 1, "vocab": 10}
    assert memory.arch_for({"arch": custom}).vocab == 10
    assert any("ZeRO-3" in s for s in memory.suggestions(resolve("2b-full")))
