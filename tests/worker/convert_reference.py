"""An independent forward pass of an original InternVL checkpoint, written for the tests from the
architecture's description (not from any implementation): InternViT with its fused qkv and layer
scales, pixel shuffle v2, the ``mlp1`` projector, and the four LLMs on their original tensors
(InternLM2's ``wqkv`` rows grouped per key-value head as [q x groups, k, v]; Phi-3's fused
``qkv_proj``/``gate_up_proj`` and its "su" long-context rope)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Weights = dict[str, torch.Tensor]


def _norm(x: torch.Tensor, w: Weights, name: str, kind: str, eps: float) -> torch.Tensor:
    if kind == "layer_norm":
        return F.layer_norm(x, x.shape[-1:], w[name + ".weight"], w[name + ".bias"], eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w[name + ".weight"]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """q: [..., Hq, T, d]; k, v: [..., Hkv, T, d]; query head h reads key-value head h // (Hq / Hkv)."""
    rep = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        t = q.shape[-2]
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def vision(w: Weights, cfg: dict, pixels: torch.Tensor) -> torch.Tensor:
    v = cfg["vision_config"]
    d, heads, eps = v["hidden_size"], v["num_attention_heads"], v["layer_norm_eps"]
    x = F.conv2d(pixels, w["vision_model.embeddings.patch_embedding.weight"],
                 w["vision_model.embeddings.patch_embedding.bias"], stride=v["patch_size"])
    b, _, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w["vision_model.embeddings.class_embedding"].expand(b, 1, d), x], 1)
    pos = w["vision_model.embeddings.position_embedding"]
    side = int(round((pos.shape[1] - 1) ** 0.5))
    grid = pos[:, 1:].reshape(1, side, side, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    x = x + torch.cat([pos[:, :1], grid], 1)
    states = [x]
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = _norm(x, w, p + "norm1", v["norm_type"], eps)
        qkv = F.linear(h, w[p + "attn.qkv.weight"], w.get(p + "attn.qkv.bias"))
        q, k, val = qkv.split(d, dim=-1)  # the fused rows are [q; k; v]
        if v["qk_normalization"]:
            q = _norm(q, w, p + "attn.q_norm", "rms_norm", eps)
            k = _norm(k, w, p + "attn.k_norm", "rms_norm", eps)
        q, k, val = (t.reshape(b, -1, heads, d // heads).transpose(1, 2) for t in (q, k, val))
        att = _attend(q, k, val, causal=False).transpose(1, 2).reshape(b, -1, d)
        x = x + w[p + "ls1"] * F.linear(att, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        h = _norm(x, w, p + "norm2", v["norm_type"], eps)
        h = F.linear(F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])),
                     w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
        x = x + w[p + "ls2"] * h
        states.append(x)
    return states[cfg["select_layer"]]


def image_features(w: Weights, cfg: dict, pixels: torch.Tensor) -> torch.Tensor:
    """[tiles, tokens, llm_hidden]: ViT, drop the class token, pixel shuffle v2, mlp1."""
    x = vision(w, cfg, pixels)[:, 1:]
    b, n, c = x.shape
    side = int(round(n**0.5))
    x = x.reshape(b, side, side, c)  # [tile, row, column, channel]
    # v2: each output token is the 2x2 block (top-left, top-right, bottom-left, bottom-right), row-major
    x = torch.cat([x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]], dim=-1)
    x = x.reshape(b, -1, 4 * c)
    x = F.layer_norm(x, x.shape[-1:], w["mlp1.0.weight"], w["mlp1.0.bias"])
    x = F.gelu(F.linear(x, w["mlp1.1.weight"], w["mlp1.1.bias"]))
    return F.linear(x, w["mlp1.3.weight"], w["mlp1.3.bias"])


def _rotate(x: torch.Tensor, llm: dict, seq: int) -> torch.Tensor:
    hd = x.shape[-1]
    base = 1.0 / (llm["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    scale = 1.0
    scaling = llm.get("rope_scaling") or {}
    if scaling.get("type") == "su":  # Phi-3 long-context rope
        orig = llm["original_max_position_embeddings"]
        factors = scaling["long_factor"] if seq > orig else scaling["short_factor"]
        base = base / torch.tensor(factors, dtype=torch.float64)
        ratio = llm["max_position_embeddings"] / orig
        scale = math.sqrt(1 + math.log(ratio) / math.log(orig)) if ratio > 1 else 1.0
    # InternLM2's "dynamic" NTK rope changes nothing below max_position_embeddings
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * base[None]
    cos, sin = (torch.cat([angles.cos(), angles.cos()], -1) * scale).float(), \
        (torch.cat([angles.sin(), angles.sin()], -1) * scale).float()
    half = hd // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def _qkv(w: Weights, p: str, h: torch.Tensor, llm: dict) -> tuple[torch.Tensor, ...]:
    fam, heads, kv = llm["model_type"], llm["num_attention_heads"], llm["num_key_value_heads"]
    hd = llm["hidden_size"] // heads
    t = h.shape[0]
    if fam == "internlm2":
        fused = F.linear(h, w[p + "attention.wqkv.weight"]).reshape(t, kv, heads // kv + 2, hd)
        q = fused[:, :, : heads // kv].reshape(t, heads, hd)
        return q, fused[:, :, -2], fused[:, :, -1]
    if fam == "phi3":
        q, k, v = F.linear(h, w[p + "self_attn.qkv_proj.weight"]).split([heads * hd, kv * hd, kv * hd], -1)
    else:
        q, k, v = (F.linear(h, w[f"{p}self_attn.{n}_proj.weight"], w.get(f"{p}self_attn.{n}_proj.bias"))
                   for n in "qkv")
    return q.reshape(t, heads, hd), k.reshape(t, kv, hd), v.reshape(t, kv, hd)


def _mlp(w: Weights, p: str, h: torch.Tensor, fam: str) -> torch.Tensor:
    if fam == "internlm2":
        gate, up, down = (w[p + f"feed_forward.{n}.weight"] for n in ("w1", "w3", "w2"))
        return F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), down)
    if fam == "phi3":
        gate, up = F.linear(h, w[p + "mlp.gate_up_proj.weight"]).chunk(2, -1)
        return F.linear(F.silu(gate) * up, w[p + "mlp.down_proj.weight"])
    return F.linear(F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"])) * F.linear(h, w[p + "mlp.up_proj.weight"]),
                    w[p + "mlp.down_proj.weight"])


def language_model(w: Weights, llm: dict, x: torch.Tensor) -> torch.Tensor:
    """[T, hidden] input embeddings -> [T, vocab] logits."""
    fam, eps = llm["model_type"], llm["rms_norm_eps"]
    attn_norm, ffn_norm, out_proj = (("attention_norm", "ffn_norm", "attention.wo") if fam == "internlm2" else
                                     ("input_layernorm", "post_attention_layernorm", "self_attn.o_proj"))
    t = x.shape[0]
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        q, k, v = _qkv(w, p, _norm(x, w, p + attn_norm, "rms_norm", eps), llm)
        q, k = (_rotate(z.transpose(0, 1), llm, t) for z in (q, k))
        att = _attend(q, k, v.transpose(0, 1), causal=True).transpose(0, 1).reshape(t, -1)
        x = x + F.linear(att, w[p + out_proj + ".weight"])
        x = x + _mlp(w, p, _norm(x, w, p + ffn_norm, "rms_norm", eps), fam)
    x = _norm(x, w, "language_model.model.norm", "rms_norm", eps)
    return F.linear(x, _output_weight(w, llm))


def embeddings(w: Weights, llm: dict) -> torch.Tensor:
    return w["language_model.model.tok_embeddings.weight" if llm["model_type"] == "internlm2"
             else "language_model.model.embed_tokens.weight"]


def _output_weight(w: Weights, llm: dict) -> torch.Tensor:
    if llm["tie_word_embeddings"]:
        return embeddings(w, llm)
    return w["language_model.output.weight" if llm["model_type"] == "internlm2" else "language_model.lm_head.weight"]


def logits(w: Weights, cfg: dict, input_ids: torch.Tensor, pixels: torch.Tensor, context_id: int) -> torch.Tensor:
    """The original model's forward: image features replace the ``<IMG_CONTEXT>`` embeddings in order."""
    llm = cfg["llm_config"]
    x = embeddings(w, llm)[input_ids].clone()
    feats = image_features(w, cfg, pixels).reshape(-1, llm["hidden_size"])
    mask = input_ids == context_id
    assert int(mask.sum()) == feats.shape[0]
    x[mask] = feats
    return language_model(w, llm, x)
