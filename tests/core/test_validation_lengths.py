"""Token lengths with the model's tokenizer and template; the model folder lookup."""

from __future__ import annotations

import json

import pytest
from conftest import image_bytes, sample, write_jsonl

from backend.core.model_card import card_from_config, read_card
from backend.core.model_folder import (
    FastTokenizer,
    ModelFolderError,
    load_tokenizer,
    require_image_tokens,
)
from backend.core.samples import tokenize_sample
from backend.core.templates import get_template
from backend.core.validation import ValidationSettings, validate_annotation

TEXTS = ["<s><|im_start|>user\nWhat colour is\tthe   shape?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>",
         "你是由上海人工智能实验室 <img></img><IMG_CONTEXT>  \n\n two  spaces", "", " leading space"]


@pytest.mark.parametrize("text", TEXTS)
def test_fast_tokenizer_matches_transformers(tokenizer, text):
    fast = FastTokenizer(tokenizer.backend_tokenizer)
    a = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    b = fast(text, add_special_tokens=False, return_offsets_mapping=True)
    assert list(a["input_ids"]) == list(b["input_ids"])
    assert [tuple(x) for x in a["offset_mapping"]] == [tuple(x) for x in b["offset_mapping"]]
    for tok in ("<img>", "</img>", "<IMG_CONTEXT>", "<|im_end|>"):
        assert fast.convert_tokens_to_ids(tok) == tokenizer.convert_tokens_to_ids(tok)


def template_for_config(config: dict) -> str:
    """The card's template of a config.json alone (no tokenizer beside it)."""
    return card_from_config(config).template


def test_model_folder(model_dir):
    ms = read_card(model_dir)
    assert (ms.template, ms.tiling.max_dynamic_patch, ms.tokens_per_tile, ms.image_size) == ("internlm2-chat", 6, 256,
                                                                                              448)
    tok = load_tokenizer(model_dir)
    assert isinstance(tok, FastTokenizer)
    require_image_tokens(tok)


@pytest.mark.parametrize("config, template", [
    ({"template": "phi3-chat", "llm_config": {"architectures": ["InternLM2ForCausalLM"]}}, "phi3-chat"),
    ({"llm_config": {"architectures": ["InternLM2ForCausalLM"]}}, "internlm2-chat"),
    ({"llm_config": {"architectures": ["Phi3ForCausalLM"]}}, "phi3-chat"),
    # the family registry's default (InternVL2.5 / InternVL3); InternVL2-1B names Hermes-2 in its config
    ({"llm_config": {"architectures": ["Qwen2ForCausalLM"]}}, "internvl2_5"),
    ({"llm_config": {"architectures": ["Qwen3ForCausalLM"]}}, "internvl2_5"),
    ({"model_type": "internvl", "text_config": {"model_type": "qwen2"}}, "internvl2_5"),
])
def test_template_lookup(config, template):
    assert template_for_config(config) == template


@pytest.mark.parametrize("config", [{}, {"llm_config": {"architectures": ["MambaForCausalLM"]}},
                                    {"template": "vicuna_v1.1"}])
def test_template_lookup_refuses_unknown(config):
    with pytest.raises(ModelFolderError):
        card_from_config(config).conversation_template()


def test_tokens_per_tile_follow_the_vision_config():
    ms = card_from_config({"template": "Hermes-2", "force_image_size": 224, "downsample_ratio": 0.5,
                           "vision_config": {"patch_size": [14, 14]}})
    assert ms.tokens_per_tile == 64 and ms.image_size == 224


def test_missing_model_pieces(tmp_path, tokenizer):
    with pytest.raises(ModelFolderError, match="config.json"):
        read_card(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ModelFolderError):
        load_tokenizer(tmp_path)

    class NoImageTokens:
        def convert_tokens_to_ids(self, token):
            return None

    with pytest.raises(ModelFolderError, match="<img>"):
        require_image_tokens(NoImageTokens())


def _rows(tmp_path, ann, tokenizer, **settings):
    out = tmp_path / "rows.jsonl"
    out.unlink(missing_ok=True)
    r = validate_annotation(ann, ann.parent, tokenizer=tokenizer, workers=1, per_sample_out=out,
                            settings=ValidationSettings(template="internlm2-chat", max_dynamic_patch=6, **settings))
    return r, [json.loads(x) for x in out.read_text().splitlines()]


def test_token_counts_equal_tokenize_sample(tmp_path, dataset, tokenizer, model_dir):
    r, rows = _rows(tmp_path, dataset, tokenizer)
    assert r.ok
    template = get_template("internlm2-chat")
    for row, line in zip(rows, dataset.read_text().splitlines(), strict=True):
        ts = tokenize_sample(json.loads(line), template, tokenizer, row["tiles"])
        assert (row["text_tokens"], row["image_tokens"], row["tokens"]) == (ts.text_tokens, ts.image_tokens,
                                                                          ts.total_tokens)
    _, fast_rows = _rows(tmp_path, dataset, load_tokenizer(model_dir))
    assert fast_rows == rows
    st = r.to_dict()["stats"]["tokens"]
    assert st["max"] == max(x["tokens"] for x in rows) and st["samples"] == 4


def test_max_seq_length_boundary(tmp_path, dataset, tokenizer):
    _, rows = _rows(tmp_path, dataset, tokenizer)
    longest = max(x["tokens"] for x in rows)
    assert _rows(tmp_path, dataset, tokenizer, max_seq_length=longest)[0].ok
    r, _ = _rows(tmp_path, dataset, tokenizer, max_seq_length=longest - 1)
    assert r.counts[("error", "too_long")] == 1
    assert f"{longest} tokens" in r.errors[0].message and "> max_seq_length" in r.errors[0].message


def test_truncation_policy(tmp_path, tokenizer):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(image_bytes(448, 448))  # one tile: 258 image tokens
    long_answer = " ".join(["red green blue"] * 40)
    ann = write_jsonl(tmp_path / "t.jsonl", [sample(1, answer=long_answer)])
    _, (row,) = _rows(tmp_path, ann, tokenizer)
    total = row["tokens"]
    # cut inside the answer: a warning, the images stay whole
    r, _ = _rows(tmp_path, ann, tokenizer, max_seq_length=total - 5, truncation="truncate")
    assert r.ok and r.counts[("warning", "truncated")] == 1 and "trained token(s) lost" in r.warnings[0].message
    # cut inside the image span: an error even with truncation allowed
    r, _ = _rows(tmp_path, ann, tokenizer, max_seq_length=100, truncation="truncate")
    assert r.counts[("error", "too_long")] == 1 and "cut through image 1" in r.errors[0].message
    # cut after the image but before the answer: nothing left to learn
    ts = tokenize_sample(sample(1, answer=long_answer), get_template("internlm2-chat"), tokenizer, [1])
    first_trained = next(k for k, x in enumerate(ts.labels) if x != -100)
    assert ts.image_spans[0][1] < first_trained
    r, _ = _rows(tmp_path, ann, tokenizer, max_seq_length=first_trained, truncation="truncate")
    assert r.counts[("error", "too_long")] == 1 and "no trained token" in r.errors[0].message
