"""The built-in tiny demo model: a transformers-native InternVL with random weights and a
byte-level BPE tokenizer built locally with the InternVL special tokens.

It uses the real shapes of the recipe where they matter to the data pipeline (448 px
tiles, 14 px patches, pixel shuffle 0.5 -> 256 image tokens per tile) and tiny widths
everywhere else, so it trains on a CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path

from backend.core.demo_card import (
    DEMO_DOWNSAMPLE_RATIO,
    DEMO_IMAGE_SIZE,
    DEMO_IMAGE_TOKENS,
    DEMO_MODEL_NAME,
    DEMO_PATCH_SIZE,
    DEMO_SIZES,
    DEMO_TEMPLATE,
    DEMO_TILING,
)
from backend.core.demo_data import COLOURS, QUESTIONS, SHAPES
from backend.core.samples import IMG_CONTEXT, IMG_END, IMG_START
from backend.core.templates import TEMPLATES, to_jinja

__all__ = ["DEMO_MODEL_NAME", "build_demo_model", "build_tokenizer", "ensure_demo_model"]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", IMG_START, IMG_END, IMG_CONTEXT,
                  "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<image>"]


def _corpus() -> list[str]:
    words = list(COLOURS) + list(SHAPES) + list(QUESTIONS.values())
    base = [
        "The quick brown fox jumps over the lazy dog.",
        "What is shown in the image? Describe the picture in detail.",
        "Answer the question using a single word or phrase.",
        "0 1 2 3 4 5 6 7 8 9 10 100 1000",
        TEMPLATES[DEMO_TEMPLATE].system_message,
    ]
    return base + words * 20


def build_tokenizer(out_dir: Path, vocab_size: int = 600):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="</s>",
        additional_special_tokens=SPECIAL_TOKENS[3:], model_max_length=8192)
    fast.chat_template = to_jinja(TEMPLATES[DEMO_TEMPLATE])  # the chat template every converted model gets
    fast.save_pretrained(out_dir)
    return fast


def build_demo_model(out_dir: Path, *, vision_hidden: int = DEMO_SIZES["vision_hidden"],
                     vision_layers: int = DEMO_SIZES["vision_layers"], text_hidden: int = DEMO_SIZES["text_hidden"],
                     text_layers: int = DEMO_SIZES["text_layers"], seed: int = 0) -> Path:
    """Write the demo model (config, safetensors weights, tokenizer, chat template) to ``out_dir``,
    with the template, tiling and tile geometry of its card (:mod:`backend.core.demo_card`)."""
    import torch
    from transformers import GenerationConfig, InternVLConfig, InternVLForConditionalGeneration, LlamaConfig
    from transformers.models.internvl import InternVLVisionConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    vision = InternVLVisionConfig(
        hidden_size=vision_hidden, num_hidden_layers=vision_layers, num_attention_heads=4,
        intermediate_size=vision_hidden * 4, image_size=DEMO_IMAGE_SIZE, patch_size=DEMO_PATCH_SIZE, attention_bias=True,
        layer_scale_init_value=0.1, use_mean_pooling=True)  # no final norm, as InternViT
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=text_hidden * 3,
        num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMG_CONTEXT),
        image_seq_length=DEMO_IMAGE_TOKENS, downsample_ratio=DEMO_DOWNSAMPLE_RATIO, tie_word_embeddings=False)
    config.template = DEMO_TEMPLATE
    for key, value in DEMO_TILING.to_dict().items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.save_pretrained(out_dir)
    return out_dir


def ensure_demo_model(models_dir: Path) -> Path:
    """Build the demo model under ``models_dir`` once; later calls return the existing folder.

    Under a file lock: a worker's first demo job, first evaluation and first chat may all ask
    at once (threads of one process, or several workers on a node); without it they built into
    the same temporary folder, and a second thread importing transformers while the first was
    still importing it failed with "cannot import name 'GenerationConfig'"."""
    import fcntl

    out = models_dir / DEMO_MODEL_NAME
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    models_dir.mkdir(parents=True, exist_ok=True)
    # flock is per open file, so it holds threads apart too (not the launcher's .demo-model.lock: that
    # one is held around this call, and a second flock of it here would wait for ever)
    with open(models_dir / ".demo-model.build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "config.json").exists() and (out / "tokenizer.json").exists():
            return out  # built meanwhile by whoever held the lock
        tmp = models_dir / f".{DEMO_MODEL_NAME}.tmp"
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        build_demo_model(tmp)
        tmp.rename(out)
    return out
