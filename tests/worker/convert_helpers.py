"""Tiny original-format InternVL checkpoints for the conversion tests.

Each LLM family gets a checkpoint with the original tensor names and shapes (random weights), the
tokenizer files such a folder ships, and remote-code files that leave a marker if anything runs
them. The tokenizers are trained here (sentencepiece for InternLM2/Phi-3, byte-level BPE for
Qwen2/Llama), so nothing is downloaded.
"""

from __future__ import annotations

import functools
import io
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

CORPUS = [
    "The quick brown fox jumps over the lazy dog, 12345 times.",
    "你好，世界！这是一个测试。上海人工智能实验室联合商汤科技开发的书生多模态大模型。",
    "  leading spaces\tand tabs\nand newlines\n\n  indented line",
    "Numbers 3.14159, 2024-06-01 and 1000000 plus x = y + 2 * z.",
    "Mixed 中文 and English 混合 text with émigré café naïve.",
    "What is shown in the image? Describe the picture in detail.",
] * 20
INTERNLM2_USER_SYMBOLS = ["<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>"]
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
PHI3_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|system|>", "<|end|>",
               "<|user|>"]
QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE_OF = {"internlm2": "internlm2-chat", "phi3": "phi3-chat", "qwen2": "Hermes-2", "llama": "internvl2_5"}
ARCH_OF = {"internlm2": "InternLM2ForCausalLM", "phi3": "Phi3ForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "llama": "LlamaForCausalLM"}
REMOTE_CODE = ("configuration_internvl_chat.py", "modeling_internvl_chat.py", "modeling_intern_vit.py",
               "conversation.py")
TEXT = dict(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=48)
VISION = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, patch_size=4,
              image_size=16)


@functools.cache
def sentencepiece_model(user_symbols: tuple[str, ...]) -> bytes:
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=out, vocab_size=420, model_type="bpe", byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, character_coverage=1.0, user_defined_symbols=list(user_symbols), unk_id=0,
        bos_id=1, eos_id=2, pad_id=-1, allow_whitespace_only_pieces=True, minloglevel=2)
    return out.getvalue()


def _added(entries: list[tuple[int, str]]) -> dict:
    return {str(i): {"content": c, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
                     "special": True} for i, c in entries}


def write_sentencepiece_tokenizer(folder: Path, family: str) -> dict:
    """tokenizer.model + tokenizer_config.json as InternLM2 / Phi-3 folders have them; returns ids."""
    if family == "internlm2":
        model = sentencepiece_model(tuple(INTERNLM2_USER_SYMBOLS))
        n = 420
        base = [(0, "<unk>"), (1, "<s>"), (2, "</s>")] + [(3 + i, s) for i, s in enumerate(INTERNLM2_USER_SYMBOLS)]
        extra = [(n + i, t) for i, t in enumerate(INTERNVL_TOKENS)]
        config = {"tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": [
            "tokenization_internlm2.InternLM2Tokenizer", None]}, "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "pad_token": "</s>", "add_bos_token": True, "add_eos_token": False}
        eos, pad = 2, 2
    else:
        model = sentencepiece_model(())
        n = 420
        base = [(0, "<unk>"), (1, "<s>"), (2, "</s>")]
        extra = [(n + i, t) for i, t in enumerate(PHI3_TOKENS + INTERNVL_TOKENS)]
        config = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "bos_token": "<s>",
                  "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>",
                  "add_bos_token": False, "add_eos_token": False}
        eos = pad = n
    config["added_tokens_decoder"] = _added(base + extra)
    (folder / "tokenizer.model").write_bytes(model)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    ids = {c: i for i, c in base + extra}
    return {"size": n + len(extra), "bos": 1, "eos": eos, "pad": pad, "ids": ids}


def write_bpe_tokenizer(folder: Path, family: str) -> dict:
    """A byte-level BPE tokenizer: vocab.json + merges.txt (Qwen2) or tokenizer.json (Llama)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    n = tok.get_vocab_size()
    extra = [(n + i, t) for i, t in enumerate(QWEN_TOKENS + INTERNVL_TOKENS)]
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
              "added_tokens_decoder": _added(extra), "tokenizer_class": "Qwen2Tokenizer"}
    if family == "qwen2":
        tok.model.save(str(folder))  # vocab.json + merges.txt
    else:
        from tokenizers import AddedToken

        tok.add_special_tokens([AddedToken(c, normalized=False, special=True) for _, c in extra])
        tok.save(str(folder / "tokenizer.json"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    ids = {c: i for i, c in extra}
    return {"size": n + len(extra), "bos": None, "eos": ids["<|im_end|>"], "pad": ids["<|endoftext|>"], "ids": ids}


def llm_config(family: str, vocab: int, tok: dict, tied: bool) -> dict:
    t = TEXT
    cfg = {"architectures": [ARCH_OF[family]], "model_type": family, "hidden_size": t["hidden"],
           "num_hidden_layers": t["layers"], "num_attention_heads": t["heads"], "num_key_value_heads": t["kv_heads"],
           "intermediate_size": t["intermediate"], "vocab_size": vocab, "hidden_act": "silu",
           "rms_norm_eps": 1e-5, "tie_word_embeddings": tied, "bos_token_id": tok["bos"], "eos_token_id": tok["eos"],
           "pad_token_id": tok["pad"], "torch_dtype": "bfloat16", "max_position_embeddings": 512,
           "_name_or_path": f"tiny-{family}", "attn_implementation": "eager"}
    if family == "internlm2":
        cfg.update(bias=False, rope_theta=1000000, rope_scaling={"type": "dynamic", "factor": 2.0},
                   auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config",
                             "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"})
    elif family == "phi3":
        half = t["hidden"] // t["heads"] // 2
        cfg.update(rope_theta=10000.0, original_max_position_embeddings=64, sliding_window=2048,
                   embd_pdrop=0.0, resid_pdrop=0.0, attention_dropout=0.0,
                   rope_scaling={"type": "su", "short_factor": [1.0 + 0.5 * i for i in range(half)],
                                 "long_factor": [2.0 + i for i in range(half)]})
    elif family == "qwen2":
        cfg.update(rope_theta=1000000.0, use_sliding_window=False, sliding_window=512, max_window_layers=2)
    else:
        cfg.update(rope_theta=500000.0, attention_bias=False, mlp_bias=False, rope_scaling=None)
    return cfg


def vision_config(style: str) -> dict:
    cfg = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", **VISION, "num_channels": 3,
           "hidden_act": "gelu", "layer_norm_eps": 1e-6, "dropout": 0.0, "attention_dropout": 0.0,
           "drop_path_rate": 0.1, "initializer_factor": 1.0, "initializer_range": 0.02, "use_flash_attn": True,
           "torch_dtype": "bfloat16"}
    if style == "300m":  # InternViT-300M: LayerNorm, qkv bias, no q/k norm
        cfg.update(norm_type="layer_norm", qkv_bias=True, qk_normalization=False)
    else:  # InternViT-6B style: RMSNorm, no qkv bias, q/k RMSNorm
        cfg.update(norm_type="rms_norm", qkv_bias=False, qk_normalization=True)
    return cfg


def original_config(family: str, vocab: int, tok: dict, *, tied: bool = False, select_layer: int = -1,
                    vision_style: str = "300m") -> dict:
    return {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
            "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                         "AutoModel": "modeling_internvl_chat.InternVLChatModel"},
            "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": VISION["image_size"],
            "max_dynamic_patch": 12, "min_dynamic_patch": 1, "pad2square": False, "ps_version": "v2",
            "select_layer": select_layer, "template": TEMPLATE_OF[family], "use_thumbnail": True,
            "use_backbone_lora": 0, "use_llm_lora": 0, "torch_dtype": "bfloat16",
            "llm_config": llm_config(family, vocab, tok, tied), "vision_config": vision_config(vision_style)}


def _shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Original tensor names and shapes, written out from the original architecture."""
    v, llm = cfg["vision_config"], cfg["llm_config"]
    d, inter, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    n_pos = (v["image_size"] // p) ** 2 + 1
    s = {"vision_model.embeddings.class_embedding": (1, 1, d),
         "vision_model.embeddings.patch_embedding.weight": (d, 3, p, p),
         "vision_model.embeddings.patch_embedding.bias": (d,),
         "vision_model.embeddings.position_embedding": (1, n_pos, d)}
    for i in range(v["num_hidden_layers"]):
        b = f"vision_model.encoder.layers.{i}."
        s.update({b + "attn.qkv.weight": (3 * d, d), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                  b + "mlp.fc1.weight": (inter, d), b + "mlp.fc1.bias": (inter,), b + "mlp.fc2.weight": (d, inter),
                  b + "mlp.fc2.bias": (d,), b + "norm1.weight": (d,), b + "norm2.weight": (d,), b + "ls1": (d,),
                  b + "ls2": (d,)})
        if v["qkv_bias"]:
            s[b + "attn.qkv.bias"] = (3 * d,)
        if v["norm_type"] == "layer_norm":
            s.update({b + "norm1.bias": (d,), b + "norm2.bias": (d,)})
        if v["qk_normalization"]:
            s.update({b + "attn.q_norm.weight": (d,), b + "attn.k_norm.weight": (d,)})
    h, w4 = llm["hidden_size"], 4 * d
    s.update({"mlp1.0.weight": (w4,), "mlp1.0.bias": (w4,), "mlp1.1.weight": (h, w4), "mlp1.1.bias": (h,),
              "mlp1.3.weight": (h, h), "mlp1.3.bias": (h,)})
    s.update(_llm_shapes(llm))
    return s


def _llm_shapes(llm: dict) -> dict[str, tuple[int, ...]]:
    fam = llm["model_type"]
    h, inter, vocab = llm["hidden_size"], llm["intermediate_size"], llm["vocab_size"]
    hd = h // llm["num_attention_heads"]
    q, kv = llm["num_attention_heads"] * hd, llm["num_key_value_heads"] * hd
    lm = "language_model."
    s = {lm + ("model.tok_embeddings.weight" if fam == "internlm2" else "model.embed_tokens.weight"): (vocab, h),
         lm + "model.norm.weight": (h,)}
    if not llm["tie_word_embeddings"]:
        s[lm + ("output.weight" if fam == "internlm2" else "lm_head.weight")] = (vocab, h)
    for i in range(llm["num_hidden_layers"]):
        b = f"{lm}model.layers.{i}."
        if fam == "internlm2":
            s.update({b + "attention.wqkv.weight": (q + 2 * kv, h), b + "attention.wo.weight": (h, q),
                      b + "feed_forward.w1.weight": (inter, h), b + "feed_forward.w3.weight": (inter, h),
                      b + "feed_forward.w2.weight": (h, inter), b + "attention_norm.weight": (h,),
                      b + "ffn_norm.weight": (h,)})
            continue
        if fam == "phi3":
            s.update({b + "self_attn.qkv_proj.weight": (q + 2 * kv, h), b + "mlp.gate_up_proj.weight": (2 * inter, h)})
        else:
            s.update({b + "self_attn.q_proj.weight": (q, h), b + "self_attn.k_proj.weight": (kv, h),
                      b + "self_attn.v_proj.weight": (kv, h), b + "mlp.gate_proj.weight": (inter, h),
                      b + "mlp.up_proj.weight": (inter, h)})
            if fam == "qwen2":
                s.update({b + "self_attn.q_proj.bias": (q,), b + "self_attn.k_proj.bias": (kv,),
                          b + "self_attn.v_proj.bias": (kv,)})
        s.update({b + "self_attn.o_proj.weight": (h, q), b + "mlp.down_proj.weight": (h, inter),
                  b + "input_layernorm.weight": (h,), b + "post_attention_layernorm.weight": (h,)})
    return s


def random_weights(cfg: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in _shapes(cfg).items():
        t = torch.randn(shape, generator=g) * (0.5 if len(shape) < 2 else 1 / math.sqrt(shape[-1]))
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "mlp1.0.weight")) or "layernorm" in name:
            t = 1.0 + 0.1 * t
        out[name] = t.to(dtype)
    return out


def write_original(folder: Path, family: str, *, shards: int = 2, dtype: torch.dtype = torch.float32,
                   tied: bool = False, select_layer: int = -1, vision_style: str = "300m",
                   seed: int = 0) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Write a tiny original checkpoint; returns (config, weights, tokenizer facts)."""
    folder.mkdir(parents=True, exist_ok=True)
    if family in ("internlm2", "phi3"):
        tok = write_sentencepiece_tokenizer(folder, family)
    else:
        tok = write_bpe_tokenizer(folder, family)
    vocab = tok["size"] if family != "phi3" else (tok["size"] + 15) // 16 * 16  # Phi-3 pads its embedding
    cfg = original_config(family, vocab, tok, tied=tied, select_layer=select_layer, vision_style=vision_style)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    weights = random_weights(cfg, seed, dtype)
    names = list(weights)
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: weights[n].contiguous() for n in part}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for name in REMOTE_CODE:  # if anything ever ran these, the marker file would appear
        (folder / name).write_text("import pathlib\npathlib.Path(__file__).with_name('EXECUTED').write_text('x')\n")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": tok["eos"]}))
    return cfg, weights, tok
