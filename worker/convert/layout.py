"""The tensor map between the original InternVL layout and the transformers-native one.

One :class:`Link` per original tensor: its name and shape in the original checkpoint, the native
tensor(s) it becomes, and how (a plain copy, the vision tower's fused ``qkv`` cut in three, or
InternLM2's ``wqkv`` whose rows are grouped per key-value head as ``[q x groups, k, v]``). Both
directions use the same links, so an export is the exact inverse of an import.

Native names are the on-disk names that transformers' ``save_pretrained`` writes for
``InternVLForConditionalGeneration`` (``vision_tower.*``, ``multi_modal_projector.*``,
``language_model.model.*``, ``language_model.lm_head.weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VisionSpec:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    patch: int
    image_size: int
    channels: int
    qkv_bias: bool
    qk_norm: bool
    norm_type: str  # "layer_norm" | "rms_norm"


@dataclass(frozen=True)
class TextSpec:
    family: str  # a name of backend.core.families
    layout: str  # the family's tensor layout: "internlm2" | "phi3" | "split"
    qkv_bias: bool  # q/k/v projections carry a bias (Qwen2 always; others as their config says)
    qk_norm: bool  # per-head q/k RMSNorm (Qwen3)
    lm_head: str  # the original name of the output projection
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    attn_bias: bool  # InternLM2 "bias" (wqkv, wo); Llama "attention_bias" (q, k, v, o)
    mlp_bias: bool  # Llama "mlp_bias"
    tied: bool


@dataclass(frozen=True)
class Link:
    original: str
    native: tuple[str, ...]
    shape: tuple[int, ...]  # in the original checkpoint
    op: str = "copy"  # "copy" | "chunk3" | "wqkv"
    groups: tuple[int, int, int] = (0, 0, 0)  # for "wqkv": kv heads, query heads per kv head, head dim


def split(link: Link, t: torch.Tensor) -> list[torch.Tensor]:
    """Original tensor -> its native tensor(s)."""
    if link.op == "copy":
        return [t]
    if link.op == "chunk3":
        return [c.contiguous() for c in t.chunk(3, dim=0)]
    kv, g, hd = link.groups
    rest = t.shape[1:]
    grouped = t.reshape(kv, g + 2, hd, *rest)
    q = grouped[:, :g].reshape(kv * g * hd, *rest)
    k = grouped[:, g].reshape(kv * hd, *rest)
    v = grouped[:, g + 1].reshape(kv * hd, *rest)
    return [q.contiguous(), k.contiguous(), v.contiguous()]


def fuse(link: Link, parts: list[torch.Tensor]) -> torch.Tensor:
    """Native tensor(s) -> the original tensor; the exact inverse of :func:`split`."""
    if link.op == "copy":
        return parts[0]
    if link.op == "chunk3":
        return torch.cat(parts, dim=0)
    kv, g, hd = link.groups
    q, k, v = parts
    rest = q.shape[1:]
    fused = torch.cat([q.reshape(kv, g, hd, *rest), k.reshape(kv, 1, hd, *rest), v.reshape(kv, 1, hd, *rest)], dim=1)
    return fused.reshape(kv * (g + 2) * hd, *rest)


def _linear(orig: str, native: str, out_f: int, in_f: int, bias: bool) -> list[Link]:
    links = [Link(f"{orig}.weight", (f"{native}.weight",), (out_f, in_f))]
    if bias:
        links.append(Link(f"{orig}.bias", (f"{native}.bias",), (out_f,)))
    return links


def _norm(orig: str, native: str, size: int, bias: bool) -> list[Link]:
    links = [Link(f"{orig}.weight", (f"{native}.weight",), (size,))]
    if bias:
        links.append(Link(f"{orig}.bias", (f"{native}.bias",), (size,)))
    return links


def vision_links(v: VisionSpec) -> list[Link]:
    o, n, d = "vision_model.", "vision_tower.", v.hidden
    positions = (v.image_size // v.patch) ** 2 + 1
    links = [
        Link(f"{o}embeddings.class_embedding", (f"{n}embeddings.cls_token",), (1, 1, d)),
        Link(f"{o}embeddings.patch_embedding.weight", (f"{n}embeddings.patch_embeddings.projection.weight",),
             (d, v.channels, v.patch, v.patch)),
        Link(f"{o}embeddings.patch_embedding.bias", (f"{n}embeddings.patch_embeddings.projection.bias",), (d,)),
        Link(f"{o}embeddings.position_embedding", (f"{n}embeddings.position_embeddings",), (1, positions, d)),
    ]
    norm_bias = v.norm_type == "layer_norm"
    for i in range(v.layers):
        ol, nl = f"{o}encoder.layers.{i}.", f"{n}encoder.layer.{i}."
        qkv = tuple(f"{nl}attention.{p}_proj" for p in "qkv")
        links.append(Link(f"{ol}attn.qkv.weight", tuple(f"{x}.weight" for x in qkv), (3 * d, d), "chunk3"))
        if v.qkv_bias:
            links.append(Link(f"{ol}attn.qkv.bias", tuple(f"{x}.bias" for x in qkv), (3 * d,), "chunk3"))
        if v.qk_norm:
            links += _norm(f"{ol}attn.q_norm", f"{nl}attention.q_norm", d, False)
            links += _norm(f"{ol}attn.k_norm", f"{nl}attention.k_norm", d, False)
        links += _linear(f"{ol}attn.proj", f"{nl}attention.projection_layer", d, d, True)
        links += _linear(f"{ol}mlp.fc1", f"{nl}mlp.fc1", v.intermediate, d, True)
        links += _linear(f"{ol}mlp.fc2", f"{nl}mlp.fc2", d, v.intermediate, True)
        links += _norm(f"{ol}norm1", f"{nl}layernorm_before", d, norm_bias)
        links += _norm(f"{ol}norm2", f"{nl}layernorm_after", d, norm_bias)
        links.append(Link(f"{ol}ls1", (f"{nl}lambda_1",), (d,)))
        links.append(Link(f"{ol}ls2", (f"{nl}lambda_2",), (d,)))
    return links


def projector_links(vision_hidden: int, scale: int, text_hidden: int) -> list[Link]:
    n, width = "multi_modal_projector.", vision_hidden * scale * scale
    return (_norm("mlp1.0", f"{n}layer_norm", width, True)
            + _linear("mlp1.1", f"{n}linear_1", text_hidden, width, True)
            + _linear("mlp1.3", f"{n}linear_2", text_hidden, text_hidden, True))


def _internlm2_layer(t: TextSpec, ol: str, nl: str) -> list[Link]:
    h, q_out, kv_out = t.hidden, t.heads * t.head_dim, t.kv_heads * t.head_dim
    groups = (t.kv_heads, t.heads // t.kv_heads, t.head_dim)
    qkv = tuple(f"{nl}self_attn.{p}_proj" for p in "qkv")
    links = [Link(f"{ol}attention.wqkv.weight", tuple(f"{x}.weight" for x in qkv), (q_out + 2 * kv_out, h),
                  "wqkv", groups)]
    if t.attn_bias:
        links.append(Link(f"{ol}attention.wqkv.bias", tuple(f"{x}.bias" for x in qkv), (q_out + 2 * kv_out,),
                          "wqkv", groups))
    links += _linear(f"{ol}attention.wo", f"{nl}self_attn.o_proj", h, q_out, t.attn_bias)
    links += _linear(f"{ol}feed_forward.w1", f"{nl}mlp.gate_proj", t.intermediate, h, False)
    links += _linear(f"{ol}feed_forward.w3", f"{nl}mlp.up_proj", t.intermediate, h, False)
    links += _linear(f"{ol}feed_forward.w2", f"{nl}mlp.down_proj", h, t.intermediate, False)
    links += _norm(f"{ol}attention_norm", f"{nl}input_layernorm", h, False)
    links += _norm(f"{ol}ffn_norm", f"{nl}post_attention_layernorm", h, False)
    return links


def _same_name_layer(t: TextSpec, prefix: str) -> list[Link]:
    """Phi-3, Qwen2/3 and Llama keep their names: the original and native tensors are the same."""
    h, q_out, kv_out = t.hidden, t.heads * t.head_dim, t.kv_heads * t.head_dim
    p = prefix
    if t.layout == "phi3":
        links = _linear(f"{p}self_attn.qkv_proj", f"{p}self_attn.qkv_proj", q_out + 2 * kv_out, h, False)
        links += _linear(f"{p}self_attn.o_proj", f"{p}self_attn.o_proj", h, q_out, False)
        links += _linear(f"{p}mlp.gate_up_proj", f"{p}mlp.gate_up_proj", 2 * t.intermediate, h, False)
        links += _linear(f"{p}mlp.down_proj", f"{p}mlp.down_proj", h, t.intermediate, False)
    else:
        links = []
        for name, out_f in (("q", q_out), ("k", kv_out), ("v", kv_out)):
            links += _linear(f"{p}self_attn.{name}_proj", f"{p}self_attn.{name}_proj", out_f, h, t.qkv_bias)
        if t.qk_norm:
            links += _norm(f"{p}self_attn.q_norm", f"{p}self_attn.q_norm", t.head_dim, False)
            links += _norm(f"{p}self_attn.k_norm", f"{p}self_attn.k_norm", t.head_dim, False)
        links += _linear(f"{p}self_attn.o_proj", f"{p}self_attn.o_proj", h, q_out, t.attn_bias)
        for name in ("gate", "up"):
            links += _linear(f"{p}mlp.{name}_proj", f"{p}mlp.{name}_proj", t.intermediate, h, t.mlp_bias)
        links += _linear(f"{p}mlp.down_proj", f"{p}mlp.down_proj", h, t.intermediate, t.mlp_bias)
    links += _norm(f"{p}input_layernorm", f"{p}input_layernorm", h, False)
    links += _norm(f"{p}post_attention_layernorm", f"{p}post_attention_layernorm", h, False)
    return links


def text_links(t: TextSpec) -> list[Link]:
    o, n = "language_model.", "language_model."
    if t.layout == "internlm2":
        links = [Link(f"{o}model.tok_embeddings.weight", (f"{n}model.embed_tokens.weight",), (t.vocab, t.hidden))]
        for i in range(t.layers):
            links += _internlm2_layer(t, f"{o}model.layers.{i}.", f"{n}model.layers.{i}.")
        links.append(Link(f"{o}model.norm.weight", (f"{n}model.norm.weight",), (t.hidden,)))
        if not t.tied:
            links.append(Link(t.lm_head, (f"{n}lm_head.weight",), (t.vocab, t.hidden)))
        return links
    links = [Link(f"{o}model.embed_tokens.weight", (f"{n}model.embed_tokens.weight",), (t.vocab, t.hidden))]
    for i in range(t.layers):
        links += _same_name_layer(t, f"{o}model.layers.{i}.")
    links.append(Link(f"{o}model.norm.weight", (f"{n}model.norm.weight",), (t.hidden,)))
    if not t.tied:
        links.append(Link(t.lm_head, (f"{n}lm_head.weight",), (t.vocab, t.hidden)))
    return links


NATIVE_HEAD = "language_model.lm_head.weight"  # absent from checkpoints that tie it


def all_links(v: VisionSpec, scale: int, t: TextSpec) -> list[Link]:
    return vision_links(v) + projector_links(v.hidden, scale, t.hidden) + text_links(t)


def runtime_name(disk_name: str) -> str:
    """On-disk native name -> the parameter name inside ``InternVLForConditionalGeneration``."""
    if disk_name.startswith("language_model.lm_head."):
        return disk_name.removeprefix("language_model.")
    if disk_name.startswith("language_model.model."):
        return "model.language_model." + disk_name.removeprefix("language_model.model.")
    return "model." + disk_name


def disk_name(name: str) -> str:
    """Either spelling of a native tensor name (on-disk or runtime) -> the on-disk one."""
    if name.startswith("lm_head."):
        return "language_model." + name
    if name.startswith("model.language_model."):
        return "language_model.model." + name.removeprefix("model.language_model.")
    if name.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
        return name.removeprefix("model.")
    return name
