"""Shared fixtures of the pure-core tests: a tiny local tokenizer and dataset builders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>",
                  "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS = [
    "What colour is the shape? Answer with one word.",
    "What shape is in the picture? Answer with one word.",
    "The picture shows a red circle on a white background.",
    "user assistant system human gpt image describe the chart table document",
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。",
    "0123456789 red green blue yellow circle square triangle star\n\t  ",
]


def build_tokenizer():
    """A byte-level BPE trained on a few sentences, with the InternVL special tokens, wrapped
    as transformers' PreTrainedTokenizerFast (no download, about 50 ms)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A model folder as vlstudio reads it: config.json (with ``template``) + tokenizer.json."""
    d = tmp_path_factory.mktemp("model")
    tokenizer.backend_tokenizer.save(str(d / "tokenizer.json"))
    (d / "config.json").write_text(json.dumps({
        "model_type": "internvl_chat", "template": "internlm2-chat", "max_dynamic_patch": 6,
        "use_thumbnail": True, "dynamic_image_size": True, "force_image_size": 448, "downsample_ratio": 0.5,
        "vision_config": {"patch_size": 14, "image_size": 448},
        "llm_config": {"architectures": ["InternLM2ForCausalLM"]}}))
    return d


def image_bytes(width: int = 64, height: int = 48, fmt: str = "PNG", colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format=fmt)
    return buf.getvalue()


def sample(i, image="images/a.png", question="<image>\nWhat colour is the shape?", answer="red", **extra) -> dict:
    rec = {"id": i, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        rec["image"] = image
    rec.update(extra)
    return rec


def write_jsonl(path: Path, records, *, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + newline)
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A small valid dataset folder: images/a.png (64x48), images/b.jpg (1000x500) and a JSONL
    with 4 samples (single image, multi-image, text-only, image without tag). Returns the
    annotation path."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(image_bytes(64, 48))
    (tmp_path / "images" / "b.jpg").write_bytes(image_bytes(1000, 500, "JPEG"))
    return write_jsonl(tmp_path / "train.jsonl", [
        sample(1),
        sample(2, image=["images/a.png", "images/b.jpg"], question="<image>\n<image>\nCompare the images."),
        sample(3, image=None, question="Say hello.", answer="Hello."),
        sample(4, image="images/b.jpg", question="Describe the picture.", answer="A red picture."),
    ])
