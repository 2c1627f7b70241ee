"""The sizes the API shows for the built-in model (it has no torch to count them) are those of
the model the worker builds."""

from __future__ import annotations

import json
from pathlib import Path

from backend.core.model_shapes import shapes_from_config
from backend.services.memory import arch_for
from backend.services.models import DEMO_MODEL_INFO


def test_registered_sizes_match_the_built_demo_model(tmp_path: Path):
    from transformers import InternVLForConditionalGeneration

    from worker.demo_model import build_demo_model

    model = InternVLForConditionalGeneration.from_pretrained(build_demo_model(tmp_path / "m"))
    vit = sum(p.numel() for p in model.model.vision_tower.parameters())
    mlp = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    total = sum(p.numel() for p in model.parameters())
    arch = DEMO_MODEL_INFO["arch"]
    assert DEMO_MODEL_INFO["num_parameters"] == total
    assert (arch["vit_params"], arch["mlp_params"], arch["llm_params"]) == (vit, mlp, total - vit - mlp)
    cfg = model.config
    assert (arch["vit_hidden"], arch["vit_layers"]) == (cfg.vision_config.hidden_size,
                                                        cfg.vision_config.num_hidden_layers)
    assert (arch["llm_hidden"], arch["llm_layers"], arch["vocab"]) == (
        cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.text_config.vocab_size)
    assert arch_for(DEMO_MODEL_INFO) is not None  # the Train page's memory estimate
    shapes = shapes_from_config(json.loads((tmp_path / "m" / "config.json").read_text()))
    assert (shapes.vision_params, shapes.projector_params, shapes.text_params) == (vit, mlp, total - vit - mlp)
