"""The converted fast tokenizers give the ids of the original slow ones, and the chat template renders
exactly vlstudio's template text.

The "original" tokenizers are re-implemented here from their documented behaviour on top of the
sentencepiece model trained for the test: split the text on the added tokens, then encode each piece
with sentencepiece. InternLM2's class encodes every piece with the dummy prefix ("legacy"); Phi-3's
``LlamaTokenizer`` with ``legacy: false`` prefixes only the start of the text (prefix disabled in the
model, "▁" prepended to the text, a lone leading "▁" dropped before a special token, and pieces that
start with a space encoded without a prefix).
"""

from __future__ import annotations

import json
import re

import pytest
import sentencepiece as spm
from convert_helpers import TEMPLATE_OF, write_original
from sentencepiece import sentencepiece_model_pb2

from backend.core.templates import TEMPLATES, render, to_jinja
from worker.convert import import_checkpoint
from worker.convert.tokenizer import _from_sentencepiece, read_added_tokens

BODY = ("What is in the image?\n\n  Two  spaces,\ttab\t\tand 中文字符 mixed with 12345 and 3.14 🙂\n"
        "   indented\r\nwindows line  end  ")


def broad_texts(specials: list[str], bos: str = "<s>") -> list[str]:
    """Special tokens followed by words, newlines, tabs and space runs; Latin, CJK, digits."""
    texts = [bos + "".join(f"{s}{w}" for s, w in zip(specials, ["\n", "word", " space", "\t", "  two",
                                                                   "中文", "123", "\n\n", "x y"] * 3, strict=False))]
    for s in specials:
        texts.append(f"{bos}{s}\n{BODY}{s} after{s}\tafter{s}   after{s}数字42")
    texts.append(bos + BODY)
    texts.append(f"{bos}<img>" + "<IMG_CONTEXT>" * 5 + "</img>\nDescribe   this.\t")
    return texts


def _split(text: str, specials: list[str]) -> list[str]:
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    return [p for p in re.split(pattern, text) if p]


def legacy_ids(model: bytes, added: dict[str, int], text: str) -> list[int]:
    sp = spm.SentencePieceProcessor(model_proto=model)
    ids = []
    for piece in _split(text, list(added)):
        ids += [added[piece]] if piece in added else sp.encode(piece)
    return ids


def non_legacy_ids(model: bytes, added: dict[str, int], text: str, all_special: set[str]) -> list[int]:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    proto.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    unk = len(sp.encode("<unk>", out_type=str))
    tokens: list[str] = []
    for piece in _split("▁" + text.replace("▁", " "), list(added)):
        if piece in added:
            tokens.append(piece)
        elif piece.startswith(("▁", " ")):
            tokens += sp.encode("<unk>" + piece, out_type=str)[unk:]
        else:
            tokens += sp.encode(piece, out_type=str)
    if len(tokens) > 1 and tokens[0] == "▁" and tokens[1] in all_special:
        tokens = tokens[1:]
    return [added[t] if t in added else sp.piece_to_id(t) for t in tokens]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from transformers import AutoTokenizer

    out = {}
    for family in ("internlm2", "phi3"):
        root = tmp_path_factory.mktemp(family)
        write_original(root / "orig", family)
        info = import_checkpoint(root / "orig", root / "native")
        tok = AutoTokenizer.from_pretrained(root / "native")
        added = {t.content: t.id for t in read_added_tokens(root / "orig")}
        out[family] = (root, info, tok, (root / "orig" / "tokenizer.model").read_bytes(), added)
    return out


def test_internlm2_tokenizer_gives_the_original_ids(converted):
    _, _, tok, model, added = converted["internlm2"]
    specials = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "</s>", "<|action_start|>"]
    texts = broad_texts(specials) + [BODY, "  starts with spaces", "\tstarts with a tab"]
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == legacy_ids(model, added, text), text
    assert tok("hi")["input_ids"][0] == added["<s>"]  # InternLM2 adds BOS like the original


def test_phi3_tokenizer_gives_the_original_ids(converted):
    _, _, tok, model, added = converted["phi3"]
    specials = ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                "<|endoftext|>"]
    all_special = {"<s>", "</s>", "<unk>", "<|endoftext|>"}
    for text in broad_texts(specials) + [BODY, "plain words first", "\nnewline first"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == non_legacy_ids(model, added, text, all_special), text
    assert tok("hi")["input_ids"][0] != added["<s>"]  # Phi-3's config does not add BOS


def test_the_test_text_tells_legacy_from_non_legacy(converted):
    """Building the InternLM2 tokenizer with the wrong (non-legacy) handling changes the ids on the
    test text: the comparison above would catch the trap."""
    root, _, tok, model, added = converted["internlm2"]
    wrong = _from_sentencepiece(root / "orig" / "tokenizer.model", read_added_tokens(root / "orig"), legacy=False)
    text = broad_texts(["<|im_start|>", "<|im_end|>", "<img>"])[1]
    wrong.add_special_tokens(list(added))
    assert wrong.encode(text, add_special_tokens=False).ids != legacy_ids(model, added, text)


def test_image_token_and_eos_are_set(converted):
    for family, (root, info, tok, _, _) in converted.items():
        config = json.loads((root / "native" / "config.json").read_text())
        assert config["image_token_id"] == tok.convert_tokens_to_ids("<IMG_CONTEXT>") == info.image_token_id
        sep = TEMPLATES[TEMPLATE_OF[family]].sep.strip()
        eos = json.loads((root / "native" / "generation_config.json").read_text())["eos_token_id"]
        assert tok.convert_tokens_to_ids(sep) in eos
        assert tok.context_image_token == "<IMG_CONTEXT>" and tok.start_image_token == "<img>"
        saved = json.loads((root / "native" / "tokenizer_config.json").read_text())
        assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"  # a name transformers 4 knows too


CONVERSATION = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."},
                {"from": "human", "value": "And  then\t?"}, {"from": "gpt", "value": "中文 answer\n"}]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("system", [None, "You are terse."])
def test_chat_template_renders_the_vlstudio_template(name, system):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=_tiny_backend())
    tok.chat_template = to_jinja(TEMPLATES[name])
    roles = {"human": "user", "gpt": "assistant"}
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": roles[t["from"]], "content": t["value"]} for t in CONVERSATION]
    convs = ([{"from": "system", "value": system}] if system else []) + CONVERSATION
    assert tok.apply_chat_template(messages, tokenize=False) == render(convs, TEMPLATES[name]).text
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt == render(convs[:-1], TEMPLATES[name], add_generation_prompt=True).text


def _tiny_backend():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
