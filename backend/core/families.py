"""The language-model families InternVL is released with, as data: one entry each.

Everything the studio knows about a family lives here and nowhere else: which original
architecture names it has, which native (transformers) text model it runs as, how its tensors are
laid out, how its tokenizer behaves, which conversation template it uses by default (and which
it was trained with; the templates themselves are registered beside it, in
:mod:`backend.core.templates`), which modules LoRA adapts, and which rope scalings convert
faithfully. A model folder is read once into a model card (:mod:`backend.core.model_card`), which
applies this table; import, export, validation, training, LoRA and the memory estimate read the card.

Adding a family is one :class:`Family` entry plus its tests (docs/models.md). Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.core.templates import TEMPLATES


@dataclass(frozen=True)
class Family:
    name: str
    #: ``llm_config.architectures[0]`` values of the original InternVL checkpoints
    architectures: tuple[str, ...]
    #: the transformers ``model_type`` it runs as natively (InternLM2 runs as Llama)
    native_type: str
    #: tensor layout of a decoder layer in the original checkpoint:
    #: "internlm2" (fused ``wqkv`` grouped per kv head, ``wo``, ``w1/w2/w3``), "phi3" (fused
    #: ``qkv_proj`` and ``gate_up_proj``), "split" (``q/k/v/o_proj``, ``gate/up/down_proj``)
    layout: str
    #: the checkpoint's own name of the output projection
    lm_head: str
    #: q/k/v projections have a bias whatever the config says (Qwen2)
    qkv_bias: bool
    #: per-head RMSNorm on q and k (Qwen3: ``self_attn.q_norm`` / ``k_norm``)
    qk_norm: bool
    #: the config key that turns the attention biases on ("bias" for InternLM2)
    bias_key: str
    #: the template a checkpoint without a ``template`` field uses, and all it was released with
    default_template: str
    templates: frozenset[str]
    #: rope scaling types that convert faithfully
    rope_types: frozenset[str]
    #: tokenizer: "sentencepiece" (tokenizer.model) or "bpe" (tokenizer.json / vocab + merges)
    tokenizer: str
    #: whether the original tokenizer adds BOS when its config does not say
    adds_bos: bool
    #: LoRA targets: module names of the native model (after conversion), the reference's own
    lora_targets: tuple[str, ...]
    #: extra ``llm_config`` keys kept as they are through import and export
    extra_config_keys: tuple[str, ...] = ()
    #: "standard" (rope_theta + rope_scaling as transformers reads them) or "phi3-su" (Phi-3's
    #: "su" scaling, which the native class calls "longrope" with an explicit factor)
    rope: str = "standard"
    #: the ``auto_map`` an original ``llm_config`` needs (remote-code LLMs)
    llm_auto_map: tuple[tuple[str, str], ...] = ()
    #: released checkpoints, for people (the docs and ``models info``)
    examples: str = ""


_SPLIT_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(
        name="internlm2", architectures=("InternLM2ForCausalLM",), native_type="llama", layout="internlm2",
        lm_head="language_model.output.weight", qkv_bias=False, qk_norm=False, bias_key="bias",
        default_template="internlm2-chat", templates=frozenset({"internlm2-chat", "internvl2_5"}),
        rope_types=frozenset({"linear", "dynamic"}), tokenizer="sentencepiece", adds_bos=True,
        # the reference adapts attention.wqkv/wo and feed_forward.w1/w2/w3: natively q/k/v/o and the MLP
        lora_targets=_SPLIT_LORA,
        llm_auto_map=(("AutoConfig", "configuration_internlm2.InternLM2Config"),
                      ("AutoModel", "modeling_internlm2.InternLM2ForCausalLM"),
                      ("AutoModelForCausalLM", "modeling_internlm2.InternLM2ForCausalLM")),
        examples="Mini-InternVL-Chat-2B-V1-5, InternVL2-2B/8B, InternVL2.5-2B/8B (InternLM2.5)"),
    Family(
        name="phi3", architectures=("Phi3ForCausalLM",), native_type="phi3", layout="phi3",
        lm_head="language_model.lm_head.weight", qkv_bias=False, qk_norm=False, bias_key="attention_bias",
        default_template="phi3-chat", templates=frozenset({"phi3-chat"}),
        rope_types=frozenset({"su", "longrope"}),  # Phi-3's "yarn" uses another attention factor
        tokenizer="sentencepiece", adds_bos=True,
        lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
        extra_config_keys=("original_max_position_embeddings", "sliding_window", "resid_pdrop", "embd_pdrop"),
        rope="phi3-su",
        examples="Mini-InternVL-Chat-4B-V1-5, InternVL2-4B"),
    Family(
        name="qwen2", architectures=("Qwen2ForCausalLM",), native_type="qwen2", layout="split",
        lm_head="language_model.lm_head.weight", qkv_bias=True, qk_norm=False, bias_key="attention_bias",
        default_template="internvl2_5", templates=frozenset({"Hermes-2", "internvl2_5"}),
        rope_types=frozenset({"linear", "dynamic", "yarn"}), tokenizer="bpe", adds_bos=False,
        lora_targets=_SPLIT_LORA, extra_config_keys=("use_sliding_window", "sliding_window", "max_window_layers"),
        examples="InternVL2-1B (Hermes-2), InternVL2.5-1B/4B (Qwen2.5), InternVL3-1B..14B"),
    Family(
        name="qwen3", architectures=("Qwen3ForCausalLM",), native_type="qwen3", layout="split",
        lm_head="language_model.lm_head.weight", qkv_bias=False, qk_norm=True, bias_key="attention_bias",
        default_template="internvl2_5", templates=frozenset({"internvl2_5"}),
        rope_types=frozenset({"linear", "dynamic", "yarn"}), tokenizer="bpe", adds_bos=False,
        lora_targets=_SPLIT_LORA,
        extra_config_keys=("head_dim", "attention_bias", "use_sliding_window", "sliding_window", "max_window_layers"),
        examples="InternVL3.5-1B..8B"),
    Family(
        name="llama", architectures=("LlamaForCausalLM",), native_type="llama", layout="split",
        lm_head="language_model.lm_head.weight", qkv_bias=False, qk_norm=False, bias_key="attention_bias",
        # transformers' own -hf conversion turns InternLM2 into Llama: those keep internlm2-chat
        default_template="internvl2_5", templates=frozenset({"Hermes-2", "internvl2_5", "internlm2-chat"}),
        rope_types=frozenset({"linear", "dynamic", "yarn", "llama3"}), tokenizer="bpe", adds_bos=True,
        lora_targets=_SPLIT_LORA, extra_config_keys=("attention_bias", "mlp_bias", "head_dim"),
        examples="InternVL2-40B (Nous-Hermes-2-Yi-34B), InternVL2-Llama3-76B"),
)}

#: the keys a native text config takes beyond those every language model has, per native type
#: (the conversion fills them from the original ``llm_config``)
NATIVE_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "llama": ("head_dim", "attention_bias", "mlp_bias"),
    "qwen2": ("use_sliding_window", "sliding_window", "max_window_layers"),
    "qwen3": ("head_dim", "attention_bias", "use_sliding_window", "sliding_window", "max_window_layers"),
    "phi3": ("original_max_position_embeddings", "sliding_window", "resid_pdrop", "embd_pdrop"),
}

for _f in FAMILIES.values():  # every template a family names is registered, its default among them
    if _f.native_type not in NATIVE_CONFIG_KEYS:
        raise RuntimeError(f"family {_f.name}: native type {_f.native_type!r} has no entry in NATIVE_CONFIG_KEYS")
    if _f.default_template not in _f.templates or not _f.templates <= TEMPLATES.keys():
        raise RuntimeError(f"family {_f.name}: templates {sorted(_f.templates)} (default {_f.default_template}) "
                           f"must be registered ones: {sorted(TEMPLATES)}")

VISION_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2")
BY_ARCHITECTURE = {arch: f for f in FAMILIES.values() for arch in f.architectures}


class UnknownFamily(ValueError):
    """A language model none of the registry's entries describes."""


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamily(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_of_architecture(arch: Any) -> Family:
    """The family of an original ``llm_config.architectures[0]``."""
    if arch in BY_ARCHITECTURE:
        return BY_ARCHITECTURE[arch]
    raise UnknownFamily(f"llm_config.architectures[0] is {arch!r}; vlstudio converts "
                        f"{', '.join(BY_ARCHITECTURE)}")


def family_of_config(config: dict) -> Family | None:
    """The family of a model's ``config.json`` (original or native), None when no entry fits.

    The original config names the architecture; a native one written by a vlstudio import keeps
    the family under ``vlstudio_source``; any other native config runs as its text model type.
    """
    source = config.get("vlstudio_source")
    if isinstance(source, dict) and source.get("family") in FAMILIES:
        return FAMILIES[source["family"]]
    llm = config.get("llm_config") or config.get("text_config") or {}
    for arch in llm.get("architectures") or []:
        if arch in BY_ARCHITECTURE:
            return BY_ARCHITECTURE[arch]
    model_type = llm.get("model_type")
    return FAMILIES.get(model_type) if model_type in FAMILIES else None
