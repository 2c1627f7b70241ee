"""The built-in tiny demo model, described without building it: the facts its ``config.json``
carries (template, tiling, tile geometry) and its sizes. ``worker.demo_model`` builds the model
from these; the API registers it and checks datasets against its card before the worker has built
it (the API has no torch); tests/worker/test_demo_model_info.py holds the built model to them.
"""

from __future__ import annotations

from typing import Any

from backend.core.model_card import ModelCard, Tiling, card_from_config

DEMO_MODEL_NAME = "internvl-tiny-demo"
#: the demo model's template (its language model is a Llama standing in for InternLM2)
DEMO_TEMPLATE = "internlm2-chat"
#: its tiling defaults: 6 tiles, as InternVL's own chat examples
DEMO_TILING = Tiling(max_dynamic_patch=6, min_dynamic_patch=1, use_thumbnail=True, dynamic_image_size=True)
#: the recipe's tile geometry (448 px tiles, 14 px patches, pixel shuffle 0.5: 256 image tokens)
DEMO_IMAGE_SIZE, DEMO_PATCH_SIZE, DEMO_DOWNSAMPLE_RATIO, DEMO_IMAGE_TOKENS = 448, 14, 0.5, 256
DEMO_SIZES = {"vision_hidden": 64, "vision_layers": 2, "text_hidden": 128, "text_layers": 2}

#: what the registry shows for it (sizes counted from the built model by the test above)
DEMO_MODEL_INFO: dict[str, Any] = {
    "description": "tiny random-weight InternVL (2-layer ViT, 2-layer Llama) for demos and tests",
    "max_dynamic_patch": DEMO_TILING.max_dynamic_patch, "use_thumbnail": DEMO_TILING.use_thumbnail,
    "num_parameters": 785_344,
    "vision_layers": DEMO_SIZES["vision_layers"], "vision_hidden_size": DEMO_SIZES["vision_hidden"],
    "text_layers": DEMO_SIZES["text_layers"], "text_hidden_size": DEMO_SIZES["text_hidden"],
    "arch": {"vit_params": 203_584, "vit_hidden": 64, "vit_layers": 2, "mlp_params": 49_920,
             "llm_params": 531_840, "llm_hidden": 128, "llm_layers": 2, "vocab": 539},
}


def demo_config_keys() -> dict[str, Any]:
    """The keys of the demo model's ``config.json`` that its card reads (the builder writes them)."""
    return {"model_type": "internvl", "template": DEMO_TEMPLATE, **DEMO_TILING.to_dict(),
            "downsample_ratio": DEMO_DOWNSAMPLE_RATIO, "image_seq_length": DEMO_IMAGE_TOKENS,
            "vision_config": {"image_size": DEMO_IMAGE_SIZE, "patch_size": DEMO_PATCH_SIZE},
            "text_config": {"model_type": "llama"}}


def demo_card() -> ModelCard:
    """The demo model's card before it is built (no tokenizer facts: it has no folder yet)."""
    return card_from_config(demo_config_keys())
