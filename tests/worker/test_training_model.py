"""The model switches of the recipe on the native InternVL (in-process, tiny demo model)."""

from __future__ import annotations

import pytest
import torch

from backend.core.presets import resolve
from backend.core.spec import Hyperparameters
from worker.training import lora, modeling


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from worker.demo_model import build_demo_model

    return str(build_demo_model(tmp_path_factory.mktemp("m") / "demo"))


def load(demo, **over):
    h = Hyperparameters(**over)
    model = modeling.load_model(demo, h, torch.float32, use_gpu=False)
    modeling.apply_freezing(model, h)
    return model, h


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freezing_switches_select_what_trains(demo):
    model, _ = load(demo, freeze_backbone=True, unfreeze_vit_layers=1, freeze_llm=True, unfreeze_lm_head=True)
    names = trainable(model)
    assert {n for n in names if "vision_tower" in n} == {n for n, _ in model.named_parameters()
                                                         if "vision_tower.encoder.layer.1." in n}
    assert "lm_head.weight" in names and not any("language_model" in n for n in names)
    assert any("multi_modal_projector" in n for n in names)
    report, total = modeling.trainable_report(model)
    assert report["lm_head"] == total["lm_head"] and "llm" not in report


def test_unfreeze_vit_layers_is_the_references_slice_start(tmp_path):
    """``layers[unfreeze_vit_layers:]`` as the reference: on 3 layers, 1 trains layers 1 and 2 (not
    "the last one"), -1 the last one, -3 all; a start outside the ViT is refused."""
    from worker.demo_model import build_demo_model

    three = str(build_demo_model(tmp_path / "demo3", vision_layers=3))
    for start, layers in ((1, {1, 2}), (-1, {2}), (-3, {0, 1, 2})):
        model, _ = load(three, freeze_backbone=True, unfreeze_vit_layers=start)
        got = {int(n.split("encoder.layer.")[1].split(".")[0]) for n in trainable(model) if "encoder.layer." in n}
        assert got == layers, start
    with pytest.raises(SystemExit, match="outside the ViT's 3 layers"):
        load(three, freeze_backbone=True, unfreeze_vit_layers=3)


def test_vision_select_layer_and_tile_size(demo):
    x = torch.randn(1, 3, 448, 448)
    last, _ = load(demo)
    second, _ = load(demo, vision_select_layer=-2)
    with torch.no_grad():
        a = last.model.get_image_features(pixel_values=x, return_dict=True).pooler_output
        b = second.model.get_image_features(pixel_values=x, return_dict=True).pooler_output
    assert a.shape == b.shape and not torch.allclose(a, b)
    small, _ = load(demo, force_image_size=224)
    assert small.config.image_seq_length == 64
    assert small.model.vision_tower.embeddings.position_embeddings.shape[1] == 16 * 16 + 1
    with torch.no_grad():
        feats = small.model.get_image_features(pixel_values=torch.randn(2, 3, 224, 224), return_dict=True)
    assert feats.pooler_output.shape[:2] == (2, 64)


def test_drop_path_is_stochastic_in_training_only(demo):
    model, _ = load(demo, drop_path_rate=0.5)
    layers = model.model.vision_tower.encoder.layer
    assert [round(layer.drop_prob, 3) for layer in layers] == [0.0, 0.5]  # linear over depth
    x = torch.randn(4, 3, 448, 448)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.model.get_image_features(pixel_values=x).pooler_output,
                           model.model.get_image_features(pixel_values=x).pooler_output)
        model.train()
        torch.manual_seed(0)
        a = model.model.get_image_features(pixel_values=x).pooler_output
        torch.manual_seed(1)
        b = model.model.get_image_features(pixel_values=x).pooler_output
    assert not torch.equal(a, b)


def test_lora_targets_the_recipes_projections(demo):
    preset = {k: v for k, v in resolve("2b-lora").model_dump().items() if k not in ("gpus", "nproc_per_node")}
    model, h = load(demo, **{**preset, "use_backbone_lora": 4})
    peft_model = lora.add_lora(model, h)
    lora_names = {n.split(".lora_")[0] for n, p in peft_model.named_parameters() if "lora_A" in n}
    suffixes = {n.rsplit(".", 1)[-1] for n in lora_names}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                        "projection_layer", "fc1", "fc2"}
    ranks = {n: m.r["default"] for n, m in peft_model.named_modules() if hasattr(m, "r") and isinstance(m.r, dict)}
    assert {r for n, r in ranks.items() if "vision_tower" in n} == {4}
    assert {r for n, r in ranks.items() if "language_model" in n} == {16}
    only = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert only and all("lora_" in n for n in only)  # the 2b-lora preset freezes everything else
    assert modeling.attention_kernel(h, use_gpu=False) == "sdpa"
