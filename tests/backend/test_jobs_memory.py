"""The GPU-memory estimate (docs/jobs.md): each knob moves the part of the formula it should."""

from __future__ import annotations

from backend.core.presets import resolve
from backend.services import memory

ARCH = memory.ARCHS["2b"]


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


def test_lora_batch_tiles_and_checkpointing():
    full, lora = est(), est(freeze_llm=True, use_llm_lora=16)
    assert lora["assumptions"]["trainable_params"] < full["assumptions"]["trainable_params"] / 5
    assert lora["per_device_gib"] < full["per_device_gib"]
    assert est(per_device_batch_size=8)["parts_gib"]["activations"] == 2 * full["parts_gib"]["activations"]
    assert est(max_dynamic_patch=4)["parts_gib"]["activations"] < full["parts_gib"]["activations"]
    assert est(grad_checkpoint=False)["parts_gib"]["activations"] > 3 * full["parts_gib"]["activations"]


def test_architecture_comes_from_info_or_name():
    assert memory.arch_for("Mini-InternVL-Chat-4B-V1-5", {}) is memory.ARCHS["4b"]
    assert memory.arch_for("my-model", {"size": "2b"}) is memory.ARCHS["2b"]
    assert memory.arch_for("internvl-tiny-demo", {}) is None
    custom = {"vit_params": 1, "vit_hidden": 8, "vit_layers": 1, "mlp_params": 1, "llm_params": 1,
              "llm_hidden": 8, "llm_layers": 1, "vocab": 10}
    assert memory.arch_for("x", {"arch": custom}).vocab == 10
    assert any("ZeRO-3" in s for s in memory.suggestions(resolve("2b-full")))
