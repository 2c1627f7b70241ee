"""Generate the genuine original-format tiny checkpoints of tests/data/families/ with InternVL's
own classes (run once, in a side environment, never by the tests).

Reference: OpenGVLab/InternVL at commit 2410d1dbf208f0e799459aff9376e5747dbf41a2
  * internvl_chat/internvl/model (``InternVLChatModel``, InternLM2 and Phi-3 remote code, the
    tokenizer of InternLM2) with transformers 4.37.2 / tokenizers 0.15.1 / sentencepiece 0.1.99
    (requirements/internvl_chat.txt): families internlm2, phi3, qwen2, llama;
  * internvl_chat_gpt_oss/internvl/model (the InternVL3.5 code, ``AutoModelForCausalLM`` for the
    LLM) with transformers 4.55.0 / tokenizers 0.21.4 (internvl_chat_gpt_oss/requirements.txt):
    family qwen3.

Side environment (outside the repository; torch comes from the project's venv through a .pth)::

    python3 -m venv /work/side/i16/venv      # + zz_main.pth -> the project venv's site-packages
    pip install transformers==4.37.2 tokenizers==0.15.1 sentencepiece==0.1.99 einops==0.6.1 \
        numpy==1.26.4 protobuf && pip install --no-deps peft==0.10.0 accelerate==0.34.2
    git archive <commit> internvl_chat/internvl internvl_chat_gpt_oss/internvl | tar -x -C ref
    PYTHONPATH=ref/internvl_chat venv/bin/python tools/make_family_fixtures.py \
        --out tests/data/families internlm2 phi3 qwen2 llama
    PYTHONPATH=ref/internvl_chat_gpt_oss venv355/bin/python tools/make_family_fixtures.py \
        --out tests/data/families qwen3 hf_qwen3

timm (only ``DropPath``, unused at drop_path_rate 0) is replaced by a stand-in module because
its import pulls in torchvision, which has no build for this torch; nothing else is patched.

Each family folder gets what the released checkpoints ship as data (``config.json``,
``generation_config.json``, sharded ``model-*.safetensors`` + index in bfloat16, the tokenizer
files saved by the original tokenizer class) and ``reference/<family>.safetensors`` / ``.json``:
the original model's fp32 logits on an input with two images (three tiles), the original
tokenizer's ids of a list of texts, and the prompt InternVL's conversation template builds.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import types
from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog, 12345 times.",
    "你好，世界！这是一个测试。上海人工智能实验室联合商汤科技开发的书生多模态大模型。",
    "  leading spaces\tand tabs\nand newlines\n\n  indented line",
    "Numbers 3.14159, 2024-06-01 and 1000000 plus x = y + 2 * z.",
    "Mixed 中文 and English 混合 text with émigré café naïve.",
    "What is shown in the image? Describe the picture in detail.",
] * 20
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
TEXTS = [
    "Hello world", " leading space", "<|im_start|>user\nHello<|im_end|>", "<|im_start|> spaced\tand\ttabs",
    "<s><|user|>\nWhat is this?<|end|>\n<|assistant|>\n", "<img><IMG_CONTEXT><IMG_CONTEXT></img>\nDescribe",
    "你好，世界！ 中文 text", "digits 1234567 and 3.14", "emoji 😀 here", "line\n\n  two   spaces",
]
TEMPLATE = {"internlm2": "internlm2-chat", "phi3": "phi3-chat", "qwen2": "internvl2_5", "llama": "Hermes-2",
            "qwen3": "internvl2_5"}
ARCH = {"internlm2": "InternLM2ForCausalLM", "phi3": "Phi3ForCausalLM", "qwen2": "Qwen2ForCausalLM",
        "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
VISION = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": 16,
          "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32, "patch_size": 4,
          "image_size": 16, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "dropout": 0.0,
          "attention_dropout": 0.0, "drop_path_rate": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
          "use_flash_attn": False, "norm_type": "layer_norm", "qkv_bias": True, "qk_normalization": False}
TEXT = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 24, "hidden_act": "silu", "rms_norm_eps": 1e-5, "max_position_embeddings": 512,
        "torch_dtype": "bfloat16"}


def _stub_timm() -> None:
    """``from timm.models.layers import DropPath`` / ``from timm.layers import DropPath``."""
    class DropPath(torch.nn.Module):  # only built for drop_path_rate > 0, which these configs avoid
        def __init__(self, *a, **k):
            raise RuntimeError("DropPath is not available in this side environment")

    import importlib.machinery

    for name in ("timm", "timm.models", "timm.models.layers", "timm.layers"):
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules["timm.models.layers"].DropPath = sys.modules["timm.layers"].DropPath = DropPath


def _sentencepiece(user_symbols: list[str]) -> bytes:
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=out, vocab_size=420, model_type="bpe", byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, character_coverage=1.0, user_defined_symbols=user_symbols, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, allow_whitespace_only_pieces=True, minloglevel=2)
    return out.getvalue()


def _bpe_files(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.model.save(str(folder))  # vocab.json + merges.txt


def make_tokenizer(family: str, work: Path):
    """The tokenizer as the released folder's own class builds it, with InternVL's added tokens
    (added as InternVL's training script does: ``add_tokens(..., special_tokens=True)``)."""
    work.mkdir(parents=True, exist_ok=True)
    if family == "internlm2":
        from internvl.model.internlm2.tokenization_internlm2 import InternLM2Tokenizer

        (work / "tokenizer.model").write_bytes(_sentencepiece(["<|im_start|>", "<|im_end|>", "<|action_start|>",
                                                               "<|action_end|>"]))
        tok = InternLM2Tokenizer(str(work / "tokenizer.model"))
        extra: list[str] = []
    elif family == "phi3":
        from transformers import LlamaTokenizer

        (work / "tokenizer.model").write_bytes(_sentencepiece([]))
        tok = LlamaTokenizer(str(work / "tokenizer.model"), legacy=False, add_bos_token=True,
                             eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        extra = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|system|>", "<|end|>",
                 "<|user|>"]
    elif family in ("qwen2", "qwen3"):
        from transformers import Qwen2Tokenizer, Qwen2TokenizerFast

        _bpe_files(work)
        cls = Qwen2TokenizerFast if family == "qwen3" else Qwen2Tokenizer  # qwen3 ships tokenizer.json
        tok = cls(vocab_file=str(work / "vocab.json"), merges_file=str(work / "merges.txt"),
                  eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None)
        extra = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    else:  # llama: a Llama-3 style byte-level tokenizer.json behind PreTrainedTokenizerFast
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        _bpe_files(work)
        backend = Tokenizer(models.BPE.from_file(str(work / "vocab.json"), str(work / "merges.txt")))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens(["<|begin_of_text|>"])
        backend.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", backend.token_to_id("<|begin_of_text|>"))])
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>")
        for name in ("vocab.json", "merges.txt"):
            (work / name).unlink()
        extra = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.add_tokens(extra + INTERNVL_TOKENS, special_tokens=True)
    return tok


def llm_config(family: str, tok) -> dict:
    cfg = {"architectures": [ARCH[family]], "model_type": family, **TEXT, "vocab_size": len(tok),
           "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
           "tie_word_embeddings": family == "qwen3"}
    if family == "internlm2":
        cfg.update(bias=False, rope_theta=1000000, rope_scaling={"type": "dynamic", "factor": 2.0},
                   attn_implementation="eager")
    elif family == "phi3":
        cfg["vocab_size"] = (len(tok) + 15) // 16 * 16  # Phi-3 pads its embedding
        half = TEXT["hidden_size"] // TEXT["num_attention_heads"] // 2
        cfg.update(rope_theta=10000.0, original_max_position_embeddings=32, sliding_window=2047, embd_pdrop=0.0,
                   resid_pdrop=0.0, attention_dropout=0.0,
                   rope_scaling={"type": "su", "short_factor": [1.0 + 0.5 * i for i in range(half)],
                                 "long_factor": [2.0 + i for i in range(half)]})
    elif family == "qwen2":
        cfg.update(rope_theta=1000000.0, use_sliding_window=False, sliding_window=512, max_window_layers=2)
    elif family == "qwen3":
        cfg.update(rope_theta=1000000.0, head_dim=8, attention_bias=False, use_sliding_window=False,
                   sliding_window=None, max_window_layers=2)
    else:
        cfg.update(rope_theta=500000.0, attention_bias=False, rope_scaling={"type": "linear", "factor": 2.0})
    return cfg


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that the logits are far from zero (the default init gives ~0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            t = torch.randn(p.shape, generator=g) * (0.5 if p.dim() < 2 else 1 / math.sqrt(p.shape[-1]))
            if p.dim() == 1 and ("norm" in name or name.startswith("mlp1.0")):
                t = 1.0 + 0.1 * t
            p.copy_(t)


def model_inputs(tok, tokens_per_tile: int, tiles: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = tok.convert_tokens_to_ids
    seq = [tok.bos_token_id] if tok.bos_token_id is not None else []
    for n in tiles:
        seq += torch.randint(3, 250, (5,), generator=g).tolist()
        seq += [ids("<img>")] + [ids("<IMG_CONTEXT>")] * (tokens_per_tile * n) + [ids("</img>")]
    seq += torch.randint(3, 250, (30,), generator=g).tolist()  # past Phi-3's original_max_position (32)
    return torch.tensor([seq])


def prompt(template: str, tokens: int) -> str:
    try:
        from internvl.conversation import get_conv_template
    except ImportError:  # the InternVL3.5 code keeps it beside the model
        from internvl.model.internvl_chat.conversation import get_conv_template

    conv = get_conv_template(template)
    conv.append_message(conv.roles[0], "<image>\nWhat is in the picture?")
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt().replace("<image>", "<img>" + "<IMG_CONTEXT>" * tokens + "</img>", 1)


def build(family: str, out: Path) -> None:
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel
    from safetensors.torch import save_file

    folder, refs = out / family, out / "reference"
    refs.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(family, folder)
    config = InternVLChatConfig(vision_config=dict(VISION), llm_config=llm_config(family, tok), select_layer=-1,
                                force_image_size=16, downsample_ratio=0.5, template=TEMPLATE[family],
                                dynamic_image_size=True, use_thumbnail=True, ps_version="v2", max_dynamic_patch=12)
    model = InternVLChatModel(config, use_flash_attn=False)
    randomise(model, seed=sorted(ARCH).index(family))
    model.to(torch.bfloat16)
    model.config.auto_map = {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                             "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                             "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"}
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="40KB")
    tok.save_pretrained(folder)
    for code in folder.glob("*.py"):  # the tokenizer's remote code: only data is committed
        code.unlink()

    # as a user loads it: the saved bf16 values in fp32, every buffer (rope caches) built afresh
    model = InternVLChatModel.from_pretrained(folder, torch_dtype=torch.float32, use_flash_attn=False).float().eval()
    model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    ids = model_inputs(tok, model.num_image_token, [2, 1])
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(pixel_values=pixels, input_ids=ids, image_flags=torch.ones(3, 1, dtype=torch.long)).logits[0]
    rows = torch.arange(0, ids.shape[1], 3)  # every third position keeps the file small
    save_file({"input_ids": ids[0].contiguous(), "pixel_values": pixels.contiguous(), "rows": rows.contiguous(),
               "logits": logits[rows].contiguous()}, str(refs / f"{folder.name}.safetensors"))
    text = prompt(TEMPLATE[family], model.num_image_token)
    ref = {"texts": TEXTS, "ids": [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS],
           "ids_with_special": [tok(t)["input_ids"] for t in TEXTS], "prompt": text,
           "prompt_ids": tok(text, add_special_tokens=False)["input_ids"],
           "tokenizer_class": type(tok).__name__, "num_image_token": model.num_image_token,
           "param_count": sum(p.numel() for p in model.parameters()),
           "versions": {"transformers": __import__("transformers").__version__,
                        "reference": "OpenGVLab/InternVL@2410d1dbf208f0e799459aff9376e5747dbf41a2"}}
    (refs / f"{folder.name}.json").write_text(json.dumps(ref, ensure_ascii=False) + "\n", encoding="utf-8")
    print(family, sorted(p.name for p in folder.iterdir()))


# the chat template of transformers' InternVL3 -hf conversion (models/internvl/convert_internvl_weights_to_hf.py)
HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}")


def build_hf(out: Path) -> None:
    """A transformers-native (-hf) InternVL3.5-style checkpoint: ``InternVLForConditionalGeneration``
    with a Qwen3 text model, saved by transformers 4.55 with its processor and chat template."""
    from safetensors.torch import save_file
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        Qwen3Config,
    )

    folder, refs = out / "hf_qwen3", out / "reference"
    refs.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    base = make_tokenizer("qwen3", folder)
    base.add_tokens(["<video>"], special_tokens=True)  # InternVLProcessor needs a video token
    base.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder, extra_special_tokens={  # as the -hf conversion writes them
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>"})
    tok.chat_template = HF_CHAT_TEMPLATE
    llm = {k: v for k, v in llm_config("qwen3", tok).items() if k not in ("architectures", "model_type")}
    vision = {k: v for k, v in VISION.items() if k not in ("architectures", "model_type", "use_flash_attn",
                                                            "qkv_bias", "qk_normalization", "drop_path_rate")}
    config = InternVLConfig(text_config=Qwen3Config(**llm, use_cache=True),
                            vision_config=InternVLVisionConfig(**vision, attention_bias=True, use_qk_norm=False,
                                                               use_absolute_position_embeddings=True),
                            image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4,
                            downsample_ratio=0.5)
    config.architectures = ["InternVLForConditionalGeneration"]
    model = InternVLForConditionalGeneration(config)
    randomise(model, seed=7)
    model.to(torch.bfloat16).save_pretrained(folder)
    # the processor itself needs torchvision (its video processor); its image half is saved alone
    GotOcr2ImageProcessor(size={"height": 16, "width": 16}, crop_to_patches=True, max_patches=12,
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    tok.save_pretrained(folder)
    model = InternVLForConditionalGeneration.from_pretrained(folder, torch_dtype=torch.float32).float().eval()
    ids = model_inputs(tok, 4, [2, 1])
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits[0]
    rows = torch.arange(0, ids.shape[1], 3)
    save_file({"input_ids": ids[0].contiguous(), "pixel_values": pixels.contiguous(), "rows": rows.contiguous(),
               "logits": logits[rows].contiguous()}, str(refs / f"{folder.name}.safetensors"))
    msgs = [{"role": "user", "content": "What is in the picture?"}]
    ref = {"prompt": tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
           "param_count": sum(p.numel() for p in model.parameters()),
           "versions": {"transformers": __import__("transformers").__version__}}
    (refs / f"{folder.name}.json").write_text(json.dumps(ref, ensure_ascii=False) + "\n", encoding="utf-8")
    print("hf_qwen3", sorted(p.name for p in folder.iterdir()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("families", nargs="+", choices=[*sorted(ARCH), "hf_qwen3"])
    args = ap.parse_args()
    _stub_timm()
    torch.manual_seed(0)
    for family in args.families:
        build_hf(args.out) if family == "hf_qwen3" else build(family, args.out)


if __name__ == "__main__":
    main()
