"""Writing an original ``internvl_chat`` config for a native model: from the original config kept
at import (brought up to date), or synthesised from the native config alone."""

from __future__ import annotations

import copy
from typing import Any

from backend.core.families import BY_ARCHITECTURE, FAMILIES, get_family
from backend.core.model_card import ModelCard
from worker.convert.configs import ORIGINAL_AUTO_MAP, SOURCE_KEY, named_template
from worker.convert.errors import ConversionError


def export_family(native: dict, base: dict | None) -> str:
    """Which original LLM family a native config.json goes back to."""
    source = native.get(SOURCE_KEY)
    if isinstance(source, dict) and source.get("family") in FAMILIES:
        return source["family"]
    if base is not None:
        arch = (base.get("llm_config", {}).get("architectures") or [None])[0]
        if arch in BY_ARCHITECTURE:
            return BY_ARCHITECTURE[arch].name
    text_type = native.get("text_config", {}).get("model_type")
    if text_type in FAMILIES and FAMILIES[text_type].native_type == text_type:
        return text_type
    raise ConversionError(f"config.json: text_config.model_type {text_type!r} has no original InternVL layout")


def _original_rope(family: str, text: dict) -> tuple[float, dict | None]:
    rope = dict(text.get("rope_parameters") or {})
    theta = float(rope.pop("rope_theta", text.get("rope_theta", 10000.0)))
    kind = rope.pop("rope_type", "default")
    rope.pop("type", None)
    if rope.get("partial_rotary_factor", 1.0) == 1.0:  # added by the native classes, unknown to the original
        rope.pop("partial_rotary_factor", None)
    if kind == "default":
        return theta, None
    if get_family(family).rope == "phi3-su":
        rope.pop("original_max_position_embeddings", None)
        rope.pop("factor", None)
        return theta, {"type": "su", **rope}
    return theta, {"type": kind, **rope}


def _original_llm(family: str, text: dict, dtype: str) -> dict[str, Any]:
    theta, scaling = _original_rope(family, text)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "initializer_range",
            "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout")
    llm: dict[str, Any] = {k: text[k] for k in keys if k in text}
    fam = get_family(family)
    llm.update(architectures=[fam.architectures[0]], model_type=family, rope_theta=theta, rope_scaling=scaling,
               torch_dtype=dtype, use_cache=True)
    if fam.bias_key != "attention_bias":  # InternLM2 calls it "bias"
        llm[fam.bias_key] = bool(text.get("attention_bias", False))
    if fam.llm_auto_map:
        llm["auto_map"] = dict(fam.llm_auto_map)
    llm.update({k: text[k] for k in fam.extra_config_keys if k in text})
    return llm


def _original_vision(vision: dict, dtype: str) -> dict[str, Any]:
    def first(x: Any) -> Any:
        return x[0] if isinstance(x, (list, tuple)) else x

    return {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "hidden_size": vision["hidden_size"], "num_hidden_layers": vision["num_hidden_layers"],
        "num_attention_heads": vision["num_attention_heads"], "intermediate_size": vision["intermediate_size"],
        "image_size": first(vision.get("image_size", 448)), "patch_size": first(vision.get("patch_size", 14)),
        "num_channels": vision.get("num_channels", 3), "qkv_bias": bool(vision.get("attention_bias", False)),
        "qk_normalization": bool(vision.get("use_qk_norm", False)), "norm_type": vision.get("norm_type", "layer_norm"),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6), "hidden_act": vision.get("hidden_act", "gelu"),
        "attention_dropout": vision.get("attention_dropout", 0.0), "dropout": vision.get("projection_dropout", 0.0),
        "drop_path_rate": 0.0, "initializer_range": vision.get("initializer_range", 0.02),
        "initializer_factor": vision.get("layer_scale_init_value", 0.1), "use_flash_attn": False,
        "torch_dtype": dtype,
    }


def synthesize_original(native: dict, family: str, dtype: str, card: ModelCard) -> dict[str, Any]:
    """An original config.json written from a native one alone (no original config to start from),
    with the template and tiling of the native folder's ``card``."""
    vision, text = native["vision_config"], native["text_config"]
    patch = vision.get("patch_size", 14)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    tokens = int(native.get("image_seq_length", 256))
    ratio = float(native.get("downsample_ratio", 0.5))
    image_size = native.get("force_image_size") or round((tokens ** 0.5) / ratio) * patch
    template = named_template(card, "config.json: template (set it before exporting)")
    return {
        "architectures": ["InternVLChatModel"], "auto_map": dict(ORIGINAL_AUTO_MAP), "model_type": "internvl_chat",
        "downsample_ratio": ratio, "force_image_size": int(image_size), **card.tiling.to_dict(), "pad2square": False,
        "ps_version": "v2", "select_layer": int(native.get("vision_feature_layer", -1)), "template": template,
        "use_backbone_lora": 0, "use_llm_lora": 0, "torch_dtype": dtype, "llm_config": _original_llm(family, text, dtype),
        "vision_config": _original_vision(vision, dtype),
    }


def update_original(base: dict, native: dict, family: str, dtype: str, card: ModelCard) -> dict[str, Any]:
    """The original config an import started from, brought up to date with what fine-tuning may
    change: the vocabulary size, tied embeddings, dtype, and the template and tiling defaults of the
    native folder's ``card``."""
    cfg = copy.deepcopy(base)
    text, llm, vision = native["text_config"], cfg["llm_config"], cfg["vision_config"]
    for o_key, n_key in (("hidden_size", "hidden_size"), ("num_hidden_layers", "num_hidden_layers")):
        if llm.get(o_key) != text.get(n_key) or vision.get(o_key) != native["vision_config"].get(n_key):
            raise ConversionError(f"the original config does not describe this model ({o_key} differs); "
                                  "export without --original-source or pass the folder it was imported from")
    arch = (llm.get("architectures") or [None])[0]
    if arch not in BY_ARCHITECTURE or BY_ARCHITECTURE[arch].name != family:
        raise ConversionError("the original config's llm_config.architectures does not match this model")
    llm["vocab_size"] = text["vocab_size"]
    tied = bool(text.get("tie_word_embeddings", False))
    if bool(llm.get("tie_word_embeddings", False)) != tied:
        llm["tie_word_embeddings"] = tied
    for d in (cfg, llm, vision):
        if d.get("torch_dtype") not in (None, dtype):  # an unset dtype stays unset
            d["torch_dtype"] = dtype
    cfg.update(card.tiling.to_dict())
    if native.get("force_image_size") is not None:
        cfg["force_image_size"] = native["force_image_size"]
    cfg["template"] = named_template(card)
    return cfg


def check_exportable(native: dict) -> None:
    """Refuse native models with parts that the original InternVL architecture does not have."""
    vision = native.get("vision_config") or {}
    problems = []
    if vision.get("use_mean_pooling", True) is False:
        problems.append("vision_config.use_mean_pooling is false, so the vision tower ends with a LayerNorm "
                        "(vision_tower.layernorm) that InternViT does not have")
    if vision.get("use_mask_token") or vision.get("use_absolute_position_embeddings", True) is False:
        problems.append("the vision embeddings differ from InternViT's (mask token or no position embeddings)")
    if native.get("vision_feature_select_strategy", "default") != "default":
        problems.append("vision_feature_select_strategy keeps the class token; the original always drops it")
    if not isinstance(native.get("vision_feature_layer", -1), int):
        problems.append("vision_feature_layer lists several layers; the original selects one")
    if native.get("projector_hidden_act", "gelu") != "gelu":
        problems.append(f"projector_hidden_act is {native.get('projector_hidden_act')!r}; mlp1 uses GELU")
    if problems:
        raise ConversionError("this model has no original InternVL layout: " + "; ".join(problems)
                              + ". Export it with the 'hf' format instead")
