"""Released InternVL configs (sizes only, as in their config.json), for shape and memory tests."""

from __future__ import annotations

import copy

VIT_300M = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": 1024,
            "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096, "patch_size": 14,
            "image_size": 448, "num_channels": 3, "qkv_bias": True, "qk_normalization": False,
            "norm_type": "layer_norm"}
INTERNLM2_1_8B = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "hidden_size": 2048,
                  "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8,
                  "intermediate_size": 8192, "vocab_size": 92553, "bias": False, "tie_word_embeddings": False}
QWEN2_5_3B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 2048,
              "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
              "intermediate_size": 11008, "vocab_size": 151936, "tie_word_embeddings": True}


def internvl(llm: dict, template: str) -> dict:
    return {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": template,
            "downsample_ratio": 0.5, "ps_version": "v2", "force_image_size": 448,
            "llm_config": copy.deepcopy(llm), "vision_config": copy.deepcopy(VIT_300M)}


MINI_2B_V1_5 = internvl(INTERNLM2_1_8B, "internlm2-chat")  # Mini-InternVL-Chat-2B-V1-5
INTERNVL2_5_4B = internvl({**QWEN2_5_3B, "vocab_size": 151674}, "internvl2_5")  # InternVL2_5-4B
