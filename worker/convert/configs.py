"""Reading the original ``internvl_chat`` config and translating it to the native one (and back).

The original config is read as plain JSON (never through its remote-code classes); missing keys
take the defaults of the original config classes, because those are what the original code would
run with (e.g. an absent ``ps_version`` means ``v1``, an absent ``norm_type`` means RMSNorm).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from backend.core.families import NATIVE_CONFIG_KEYS, UnknownFamily, family_of_architecture, get_family
from backend.core.model_card import ModelCard, card_from_config
from backend.core.templates import TEMPLATES
from worker.convert.errors import ConversionError
from worker.convert.layout import TextSpec, VisionSpec

ORIGINAL_AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}
SOURCE_KEY = "vlstudio_source"  # where the native config.json keeps the original config


@dataclass(frozen=True)
class OriginalModel:
    """An original ``internvl_chat`` config, checked and normalised."""

    raw: dict[str, Any]
    vision: VisionSpec
    text: TextSpec
    llm: dict[str, Any]
    scale: int  # 1 / downsample_ratio
    select_layer: int
    card: ModelCard  # its template and tiling
    image_size: int  # force_image_size, the tile size
    dtype: str

    @property
    def template(self) -> str:
        return named_template(self.card)

    @property
    def num_image_token(self) -> int:
        return (self.image_size // self.vision.patch) ** 2 // (self.scale * self.scale)

    @property
    def tiling(self) -> dict[str, Any]:
        return self.card.tiling.to_dict()


def _need(d: dict, key: str, where: str, kind: type | tuple[type, ...] = int) -> Any:
    if key not in d:
        raise ConversionError(f"config.json: {where}.{key} is missing")
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ConversionError(f"config.json: {where}.{key} has the wrong type ({value!r})")
    return value


def named_template(card: ModelCard, where: str = "config.json: template") -> str:
    """The card's template, which the original layout must name (its code has no tokenizer template)."""
    if card.template not in TEMPLATES:
        raise ConversionError(f"{where} is {card.declared_template or card.template!r}; the original InternVL layout "
                              f"needs one of {', '.join(sorted(TEMPLATES))}")
    return card.template


def _vision_spec(v: dict) -> VisionSpec:
    w = "vision_config"
    spec = VisionSpec(
        hidden=_need(v, "hidden_size", w), layers=_need(v, "num_hidden_layers", w),
        heads=_need(v, "num_attention_heads", w), intermediate=_need(v, "intermediate_size", w),
        patch=_need(v, "patch_size", w), image_size=_need(v, "image_size", w),
        channels=int(v.get("num_channels", 3)), qkv_bias=bool(v.get("qkv_bias", False)),
        qk_norm=bool(v.get("qk_normalization", True)), norm_type=v.get("norm_type", "rms_norm"))
    if spec.norm_type not in ("layer_norm", "rms_norm"):
        raise ConversionError(f"config.json: vision_config.norm_type {spec.norm_type!r} is unknown")
    if spec.qk_norm and float(v.get("layer_norm_eps", 1e-6)) != 1e-6:
        raise ConversionError("config.json: vision_config uses qk_normalization with layer_norm_eps "
                              f"{v.get('layer_norm_eps')}; the native q/k norms use 1e-6 only")
    if spec.hidden % spec.heads or spec.image_size % spec.patch:
        raise ConversionError("config.json: vision_config sizes are inconsistent (hidden_size % heads or "
                              "image_size % patch_size is not 0)")
    return spec


def _text_spec(family: str, llm: dict) -> TextSpec:
    w = "llm_config"
    hidden, heads = _need(llm, "hidden_size", w), _need(llm, "num_attention_heads", w)
    kv_heads = int(llm.get("num_key_value_heads") or heads)
    head_dim = int(llm.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise ConversionError(f"config.json: llm_config.num_attention_heads {heads} is not a multiple of "
                              f"num_key_value_heads {kv_heads}")
    fam = get_family(family)
    attn_bias = bool(llm.get(fam.bias_key, fam.bias_key == "bias"))  # InternLM2's "bias" defaults to true
    return TextSpec(
        family=family, layout=fam.layout, qkv_bias=fam.qkv_bias or attn_bias, qk_norm=fam.qk_norm,
        lm_head=fam.lm_head, hidden=hidden, layers=_need(llm, "num_hidden_layers", w), heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, intermediate=_need(llm, "intermediate_size", w), vocab=_need(llm, "vocab_size", w),
        attn_bias=attn_bias, mlp_bias=bool(llm.get("mlp_bias", False)),
        tied=bool(llm.get("tie_word_embeddings", False)))


def parse_original(cfg: dict) -> OriginalModel:
    """Check an original config.json and extract what the conversion needs."""
    if cfg.get("model_type") != "internvl_chat":
        raise ConversionError(f"config.json: model_type is {cfg.get('model_type')!r}, not 'internvl_chat'")
    llm = cfg.get("llm_config")
    vision = cfg.get("vision_config")
    if not isinstance(llm, dict) or not isinstance(vision, dict):
        raise ConversionError("config.json: llm_config and vision_config must both be present")
    try:
        family = family_of_architecture((llm.get("architectures") or [None])[0]).name
    except UnknownFamily as e:
        raise ConversionError(f"config.json: {e}") from None
    ps = cfg.get("ps_version", "v1")
    if ps != "v2":
        raise ConversionError(
            f"config.json: ps_version is {ps!r}. Only pixel shuffle 'v2' exists in the native InternVL model; "
            "'v1' checkpoints (which transpose each tile's feature map) cannot be converted faithfully")
    ratio = float(cfg.get("downsample_ratio", 0.5))
    scale = round(1 / ratio)
    if abs(scale * ratio - 1) > 1e-9:
        raise ConversionError(f"config.json: downsample_ratio {ratio} is not 1/n")
    v = _vision_spec(vision)
    t = _text_spec(family, llm)
    select = int(cfg.get("select_layer", -1))
    if not -(v.layers + 1) <= select <= v.layers:
        raise ConversionError(f"config.json: select_layer {select} is out of range for {v.layers} layers")
    image_size = int(cfg.get("force_image_size") or v.image_size)
    if (image_size // v.patch) % scale:
        raise ConversionError("config.json: force_image_size / patch_size is not divisible by 1/downsample_ratio")
    dtype = str(cfg.get("torch_dtype") or llm.get("torch_dtype") or "bfloat16")
    try:
        card = card_from_config(cfg)
    except ValueError as e:  # an unknown template
        raise ConversionError(str(e)) from None
    named_template(card)
    return OriginalModel(raw=cfg, vision=v, text=t, llm=llm, scale=scale, select_layer=select,
                         card=card, image_size=image_size, dtype=dtype)


def _rope(family: str, llm: dict) -> dict[str, Any]:
    theta = float(llm.get("rope_theta", 10000.0))
    scaling = llm.get("rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("rope_type", scaling.get("type"))
    supported = get_family(family).rope_types
    if kind not in supported:
        raise ConversionError(f"config.json: llm_config.rope_scaling type {kind!r} is not supported for {family} "
                              f"(supported: {', '.join(sorted(supported))})")
    params = {k: v for k, v in scaling.items() if k not in ("type", "rope_type")}
    if get_family(family).rope == "phi3-su":
        kind = "longrope"
        original_max = int(llm.get("original_max_position_embeddings", llm.get("max_position_embeddings", 4096)))
        params["original_max_position_embeddings"] = original_max
        # the original derives its attention factor from this ratio; the native class wants it spelled out
        params.setdefault("factor", int(llm.get("max_position_embeddings", original_max)) / original_max)
    return {"rope_type": kind, "rope_theta": theta, **params}


def _text_config(m: OriginalModel) -> Any:
    """The native text config: the keys every language model has, plus those of its native type
    (:data:`backend.core.families.NATIVE_CONFIG_KEYS`)."""
    from transformers import CONFIG_MAPPING

    t, llm = m.text, m.llm
    common = dict(
        vocab_size=t.vocab, hidden_size=t.hidden, intermediate_size=t.intermediate,
        num_hidden_layers=t.layers, num_attention_heads=t.heads, num_key_value_heads=t.kv_heads,
        hidden_act=llm.get("hidden_act", "silu"), max_position_embeddings=int(llm.get("max_position_embeddings", 2048)),
        rms_norm_eps=float(llm.get("rms_norm_eps", 1e-6)), initializer_range=float(llm.get("initializer_range", 0.02)),
        tie_word_embeddings=t.tied, bos_token_id=llm.get("bos_token_id"), eos_token_id=llm.get("eos_token_id"),
        pad_token_id=llm.get("pad_token_id"), use_cache=True, rope_parameters=_rope(t.family, llm),
        attention_dropout=float(llm.get("attention_dropout", 0.0)), dtype=m.dtype)
    pad = common["pad_token_id"]
    if pad is not None and not 0 <= pad < t.vocab:
        raise ConversionError(f"config.json: llm_config.pad_token_id {pad} is outside the vocabulary ({t.vocab})")
    native = get_family(t.family).native_type
    values = {"head_dim": t.head_dim, "attention_bias": t.attn_bias, "mlp_bias": t.mlp_bias,
              "use_sliding_window": bool(llm.get("use_sliding_window", False)),
              "sliding_window": llm.get("sliding_window"),
              "max_window_layers": int(llm.get("max_window_layers", t.layers)),
              "original_max_position_embeddings": int(llm.get("original_max_position_embeddings",
                                                              common["max_position_embeddings"])),
              "resid_pdrop": float(llm.get("resid_pdrop", 0.0)), "embd_pdrop": float(llm.get("embd_pdrop", 0.0))}
    try:
        return CONFIG_MAPPING[native](**common, **{k: values[k] for k in NATIVE_CONFIG_KEYS[native]})
    except (KeyError, ValueError, TypeError) as e:
        raise ConversionError(f"config.json: llm_config cannot be expressed natively: {e}") from None


def _vision_config(m: OriginalModel) -> Any:
    from transformers.models.internvl import InternVLVisionConfig

    v, raw = m.vision, m.raw["vision_config"]
    return InternVLVisionConfig(
        hidden_size=v.hidden, num_hidden_layers=v.layers, num_attention_heads=v.heads,
        intermediate_size=v.intermediate, attention_bias=v.qkv_bias, use_qk_norm=v.qk_norm,
        hidden_act=raw.get("hidden_act", "gelu"), layer_norm_eps=float(raw.get("layer_norm_eps", 1e-6)),
        norm_type=v.norm_type, image_size=v.image_size, patch_size=v.patch, num_channels=v.channels,
        attention_dropout=float(raw.get("attention_dropout", 0.0)), projection_dropout=float(raw.get("dropout", 0.0)),
        layer_scale_init_value=float(raw.get("initializer_factor", 0.1)),
        initializer_range=float(raw.get("initializer_range", 0.02)),
        use_mean_pooling=True,  # no final norm: the original tower has none
        use_absolute_position_embeddings=True, dtype=m.dtype)


def native_config(m: OriginalModel, image_token_id: int) -> Any:
    """The ``InternVLConfig`` of the converted model, with the studio's tiling defaults and the whole
    original config kept under ``vlstudio_source`` (so that export can restore it after fine-tuning)."""
    from transformers import InternVLConfig

    config = InternVLConfig(
        vision_config=_vision_config(m), text_config=_text_config(m), image_token_id=image_token_id,
        image_seq_length=m.num_image_token, downsample_ratio=1 / m.scale, projector_hidden_act="gelu",
        vision_feature_layer=m.select_layer, vision_feature_select_strategy="default",
        tie_word_embeddings=m.text.tied, dtype=m.dtype)
    config.architectures = ["InternVLForConditionalGeneration"]
    config.template = m.template
    for key, value in m.tiling.items():
        setattr(config, key, value)
    config.force_image_size = m.image_size
    setattr(config, SOURCE_KEY, {"format": "internvl_chat", "family": m.text.family, "config": copy.deepcopy(m.raw)})
    return config

