"""A model's real shapes and parameter counts by part, read from its ``config.json`` alone
(original ``internvl_chat`` or transformers-native ``internvl``): what ``models info`` shows and
what the memory estimate computes with, for any model, whatever its name.

The counts are written out from the architecture (checked against the tensors of the genuine
tiny checkpoints in the tests). Pure Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from backend.core.families import family_of_config


class ShapeError(ValueError):
    """The config lacks a size the counts need; the message names the key."""


@dataclass(frozen=True)
class ModelShapes:
    family: str | None
    vision_params: int
    projector_params: int
    text_params: int
    vision_hidden: int
    vision_layers: int
    vision_tokens_per_tile: int  # patches + class token
    text_hidden: int
    text_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    image_tokens_per_tile: int

    @property
    def total_params(self) -> int:
        return self.vision_params + self.projector_params + self.text_params

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_params": self.total_params}


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) else value


def _need(d: dict, key: str, where: str) -> int:
    value = _first(d.get(key))
    if not isinstance(value, int) or isinstance(value, bool):
        raise ShapeError(f"config.json: {where}.{key} is missing or not a number")
    return value


def _vision(v: dict, native: bool) -> tuple[int, int, int, int]:
    d, layers = _need(v, "hidden_size", "vision_config"), _need(v, "num_hidden_layers", "vision_config")
    inter, patch = _need(v, "intermediate_size", "vision_config"), _need(v, "patch_size", "vision_config")
    size, ch = _need(v, "image_size", "vision_config"), int(_first(v.get("num_channels", 3)))
    qkv_bias = bool(v.get("attention_bias" if native else "qkv_bias", False))
    qk_norm = bool(v.get("use_qk_norm" if native else "qk_normalization", not native))
    norm_bias = v.get("norm_type", "layer_norm" if native else "rms_norm") == "layer_norm"
    positions = (size // patch) ** 2 + 1
    embed = d * ch * patch * patch + d + d + positions * d
    layer = (3 * d * d + (3 * d if qkv_bias else 0) + (2 * d if qk_norm else 0) + d * d + d
             + d * inter + inter + inter * d + d + 2 * d * (2 if norm_bias else 1) + 2 * d)
    final_norm = 2 * d if native and v.get("use_mean_pooling", True) is False else 0
    return embed + layers * layer + final_norm, d, layers, positions


def _text(llm: dict, family_name: str | None, tied: bool) -> dict[str, Any]:
    from backend.core.families import FAMILIES

    fam = FAMILIES.get(family_name or "")
    w = "llm_config"
    h, layers = _need(llm, "hidden_size", w), _need(llm, "num_hidden_layers", w)
    heads, inter, vocab = _need(llm, "num_attention_heads", w), _need(llm, "intermediate_size", w), _need(
        llm, "vocab_size", w)
    kv = int(llm.get("num_key_value_heads") or heads)
    hd = int(llm.get("head_dim") or h // heads)
    bias_key = fam.bias_key if fam else "attention_bias"
    attn_bias = bool(llm.get(bias_key, bias_key == "bias"))
    qkv_bias = attn_bias or bool(fam and fam.qkv_bias)
    mlp_bias = bool(llm.get("mlp_bias", False))
    q, kvd = heads * hd, kv * hd
    attn = h * (q + 2 * kvd) + (q + 2 * kvd if qkv_bias else 0) + q * h + (h if attn_bias else 0)
    mlp = 3 * h * inter + (2 * inter + h if mlp_bias else 0)
    qk_norm = 2 * hd if fam and fam.qk_norm else 0
    params = vocab * h * (1 if tied else 2) + h + layers * (attn + mlp + 2 * h + qk_norm)
    return dict(text_params=params, text_hidden=h, text_layers=layers, heads=heads, kv_heads=kv, head_dim=hd,
                intermediate=inter, vocab=vocab, tied=tied)


def shapes_from_config(config: dict) -> ModelShapes:
    """Shapes and counts of an original or native InternVL ``config.json``."""
    native = config.get("model_type") == "internvl"
    vision = config.get("vision_config")
    llm = config.get("text_config" if native else "llm_config")
    if not isinstance(vision, dict) or not isinstance(llm, dict):
        raise ShapeError("config.json: vision_config and llm_config (text_config) must both be present")
    family = family_of_config(config)
    vision_params, d, vlayers, positions = _vision(vision, native)
    # InternVLConfig ties the embeddings unless told otherwise; the original configs say it per LLM
    tied = (config.get("tie_word_embeddings", llm.get("tie_word_embeddings", True)) if native
            else llm.get("tie_word_embeddings", False))
    text = _text(llm, family.name if family else None, bool(tied))
    ratio = float(config.get("downsample_ratio", 0.5))
    scale = round(1 / ratio)
    width = d * scale * scale
    projector = 2 * width + width * text["text_hidden"] + text["text_hidden"] + text["text_hidden"] ** 2 + text[
        "text_hidden"]
    if native:
        tokens = int(config.get("image_seq_length", 256))
    else:
        image = int(config.get("force_image_size") or _first(vision.get("image_size")))
        tokens = (image // _need(vision, "patch_size", "vision_config")) ** 2 // (scale * scale)
    return ModelShapes(family=family.name if family else None, vision_params=vision_params,
                       projector_params=projector, vision_hidden=d, vision_layers=vlayers,
                       vision_tokens_per_tile=positions, image_tokens_per_tile=tokens, **text)


def tile_geometry(config: dict, force_image_size: int | None = None) -> tuple[int, int]:
    """(tile size in px, image tokens per tile) of a model config, or of ``force_image_size``
    tiles on the same vision tower (its patch size and pixel-shuffle ratio)."""
    vision = config.get("vision_config") or {}
    patch = int(_first(vision.get("patch_size")) or 14)
    ratio = float(config.get("downsample_ratio", 0.5))
    size = force_image_size or int(config.get("force_image_size") or _first(vision.get("image_size")) or 448)
    return size, int((size // patch) ** 2 * ratio**2)
