"""The model card of every genuine family checkpoint (tests/data/families): format, family,
template, tiling, tile geometry, shapes and tokenizer facts, written out here; the rules it
applies; and the tokenizer template it hands out, which renders as the tokenizer itself does."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from backend.core.model_card import (
    DEFAULT_TILING,
    ORIGINAL_TILING,
    Tiling,
    TokenizerFacts,
    card_from_config,
    layered_tiling,
    read_card,
)
from backend.core.model_folder import ModelFolderError
from backend.core.presets import check_tiling
from backend.core.templates import TOKENIZER_TEMPLATE, get_template, render

DATA = Path(__file__).resolve().parents[1] / "data" / "families"
SEED = Tiling(12, 1, True, True)  # what every fixture's config (or image processor) says
QWEN_SPECIALS = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}

#: name -> (format, family, template, architecture, tokenizer files, special tokens, has a chat template)
GOLDEN = {
    "internlm2": ("original", "internlm2", "internlm2-chat", "InternLM2ForCausalLM", ("tokenizer.model",),
                  {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}, False),
    "phi3": ("original", "phi3", "phi3-chat", "Phi3ForCausalLM", ("tokenizer.model",),
             {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
             False),
    "qwen2": ("original", "qwen2", "internvl2_5", "Qwen2ForCausalLM", ("vocab.json", "merges.txt"), QWEN_SPECIALS,
              False),
    "llama": ("original", "llama", "Hermes-2", "LlamaForCausalLM", ("tokenizer.json",),
              {"bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, False),
    "qwen3": ("original", "qwen3", "internvl2_5", "Qwen3ForCausalLM", ("tokenizer.json", "vocab.json", "merges.txt"),
              QWEN_SPECIALS, False),
    "hf_qwen3": ("hf", "qwen3", TOKENIZER_TEMPLATE, "qwen3", ("tokenizer.json", "vocab.json", "merges.txt"),
                 {**QWEN_SPECIALS, "start_image_token": "<img>", "end_image_token": "</img>",
                  "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}, True),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_card_of_every_family_fixture(name):
    fmt, family, template, arch, files, specials, chat = GOLDEN[name]
    card = read_card(DATA / name)
    assert (card.format, card.family, card.template, card.architecture) == (fmt, family, template, arch)
    assert card.tiling == SEED
    assert (card.image_size, card.tokens_per_tile) == (16, 4)  # 16 px tiles of the tiny towers
    assert card.shapes is not None and card.shapes.image_tokens_per_tile == 4
    facts = json.loads((DATA / "reference" / f"{name}.json").read_text("utf-8"))
    assert card.shapes.total_params == facts["param_count"]  # counted from the genuine checkpoint
    assert set(files) <= set(card.tokenizer.files)
    assert dict(card.tokenizer.special_tokens) == specials
    assert (card.tokenizer.chat_template is not None) == chat
    assert card.conversation_template().name == template
    as_json = json.loads(json.dumps(card.to_dict()))
    assert (as_json["template"], as_json["tiling"]["max_dynamic_patch"], as_json["tokenizer"]["chat_template"]) == (
        template, 12, chat)


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "phi3", "hf_qwen3"])
def test_card_tokenizer_facts_are_what_transformers_loads(name, tmp_path):
    """The chat template and special tokens of the card are the tokenizer's own (the folders that
    need no remote code to load; a copy without the remote-code config, as an import sees it)."""
    from transformers import AutoTokenizer

    folder = tmp_path / name
    shutil.copytree(DATA / name, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("auto_map", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "config.json").unlink()  # AutoTokenizer would otherwise ask for the remote-code config class
    tok = AutoTokenizer.from_pretrained(folder)
    facts = TokenizerFacts.read(folder)
    assert dict(facts.special_tokens) == tok.special_tokens_map
    assert facts.chat_template == tok.chat_template
    tok.save_pretrained(tmp_path / "saved")  # as a fine-tune's folder holds it (transformers 5 keys)
    saved = TokenizerFacts.read(tmp_path / "saved")
    assert (saved.special_tokens, saved.chat_template) == (facts.special_tokens, facts.chat_template)


def test_tokenizer_template_renders_as_the_tokenizer_does(tmp_path):
    """The -hf checkpoint's ``tokenizer`` template: the golden prompt the fixture generator wrote with
    apply_chat_template, and transformers' apply_chat_template itself on longer conversations."""
    from transformers import AutoTokenizer

    card = read_card(DATA / "hf_qwen3")
    template = card.conversation_template()
    golden = json.loads((DATA / "reference" / "hf_qwen3.json").read_text("utf-8"))["prompt"]
    conv = [{"from": "human", "value": "What is in the picture?"}]
    assert render(conv, template, add_generation_prompt=True).text == golden
    tok = AutoTokenizer.from_pretrained(DATA / "hf_qwen3")
    turns = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nWhat colour?"},
             {"from": "gpt", "value": "Red."}, {"from": "human", "value": "  And the shape? "},
             {"from": "gpt", "value": "A circle.\n"}]
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    msgs = [{"role": roles[t["from"]], "content": t["value"]} for t in turns]
    rendered = render(turns, template)
    assert rendered.text == tok.apply_chat_template(msgs, tokenize=False)
    assert [rendered.text[a:b] for a, b in rendered.trained_spans] == ["Red.<|im_end|>\n", "A circle.\n<|im_end|>\n"]
    assert render(turns[:2], template, add_generation_prompt=True).text == tok.apply_chat_template(
        msgs[:2], tokenize=False, add_generation_prompt=True)
    assert template.stop_strings == ["<|im_end|>"]
    # plain data: it pickles into the validation workers and keys caches (also on disk)
    again = pickle.loads(pickle.dumps(template))
    assert again == template and hash(again) == hash(template) and again.fingerprint() == template.fingerprint()
    assert read_card(DATA / "qwen3").conversation_template().fingerprint() != template.fingerprint()


@pytest.mark.parametrize("config, chat, template", [
    ({"model_type": "internvl_chat", "template": "phi3-chat", "llm_config": {"architectures": ["Qwen2ForCausalLM"]}},
     None, "phi3-chat"),  # the config's own name wins
    ({"model_type": "internvl_chat", "llm_config": {"architectures": ["Qwen2ForCausalLM"]}}, "{{x}}", "internvl2_5"),
    ({"model_type": "internvl", "text_config": {"model_type": "qwen2"}}, "{{x}}", TOKENIZER_TEMPLATE),  # -hf
    ({"model_type": "internvl", "text_config": {"model_type": "qwen2"}}, None, "internvl2_5"),
    ({"model_type": "internvl", "template": "Hermes-2", "text_config": {"model_type": "qwen2"}}, "{{x}}", "Hermes-2"),
    ({"model_type": "internvl", "template": "tokenizer", "text_config": {"model_type": "qwen3"}}, "{{x}}",
     TOKENIZER_TEMPLATE),  # a fine-tune of an -hf checkpoint names it
    ({"model_type": "internvl", "text_config": {"model_type": "mamba"}}, None, None),
])
def test_the_template_rule(config, chat, template):
    assert card_from_config(config, tokenizer=TokenizerFacts(chat_template=chat)).template == template


def test_unknown_templates_and_missing_chat_templates_are_errors():
    with pytest.raises(ModelFolderError, match="vicuna"):
        card_from_config({"model_type": "internvl_chat", "template": "vicuna_v1.1"})
    card = card_from_config({"model_type": "internvl", "text_config": {"model_type": "mamba"}})
    with pytest.raises(ModelFolderError, match="name one"):
        card.conversation_template()
    with pytest.raises(ModelFolderError, match="has none"):
        card.conversation_template(TOKENIZER_TEMPLATE)
    assert card.conversation_template("Hermes-2") is get_template("Hermes-2")


def test_the_tiling_rule(tmp_path):
    original = {"model_type": "internvl_chat", "llm_config": {"architectures": ["InternLM2ForCausalLM"]}}
    assert card_from_config(original).tiling == ORIGINAL_TILING == Tiling(6, 1, False, False)
    assert card_from_config({**original, "max_dynamic_patch": 12, "use_thumbnail": True}).tiling == Tiling(12, 1, True,
                                                                                                           False)
    native = {"model_type": "internvl", "text_config": {"model_type": "qwen2"}}
    assert card_from_config(native).tiling == DEFAULT_TILING == SEED
    (tmp_path / "config.json").write_text(json.dumps(native))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"max_patches": 4, "min_patches": 2,
                                                                   "crop_to_patches": False}))
    assert read_card(tmp_path).tiling == Tiling(4, 2, True, False)
    (tmp_path / "config.json").write_text(json.dumps({**native, "max_dynamic_patch": 6}))
    assert read_card(tmp_path).tiling == Tiling(6, 2, True, False)  # read again: the file changed


def test_layered_tiling_says_where_the_budget_came_from():
    card = card_from_config({"model_type": "internvl", "max_dynamic_patch": 6, "text_config": {"model_type": "llama"}})
    assert layered_tiling(None) == (DEFAULT_TILING, "vlstudio's default, no model chosen")
    assert layered_tiling(card, model="tiny") == (Tiling(6, 1, True, True), "model 'tiny''s own")
    tiling, source = check_tiling(card, "demo", None, model="tiny")
    assert (tiling, source) == (Tiling(2, 1, True, True), "from preset 'demo'")
    assert check_tiling(card, "demo", 4, model="tiny") == (Tiling(4, 1, True, True), "as given")
    assert check_tiling(card, "2b-full", None)[0] == SEED  # the seed's scripts set all four
    with pytest.raises(KeyError, match="unknown preset"):
        check_tiling(card, "nope")
    assert Tiling(6).tiles_per_image == 7 and Tiling(1).tiles_per_image == 1
    assert Tiling(6, dynamic_image_size=False).tiles_per_image == 1


def test_demo_card_is_the_built_demo_models_card(tmp_path):
    """The API checks datasets against the demo model's card before the worker has built it: the
    built model's card says the same."""
    from backend.core.demo_card import demo_card
    from worker.demo_model import build_demo_model

    built = read_card(build_demo_model(tmp_path / "demo"))
    before = demo_card()
    assert (before.format, before.family, before.template, before.tiling, before.image_size, before.tokens_per_tile) \
        == (built.format, built.family, built.template, built.tiling, built.image_size, built.tokens_per_tile) \
        == ("native", "llama", "internlm2-chat", Tiling(6, 1, True, True), 448, 256)
    # its tokenizer's chat template renders the template the card names
    conv = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": " Red. "}]
    as_tokenizer = render(conv, built.conversation_template(TOKENIZER_TEMPLATE)).text
    assert as_tokenizer == render(conv, built.conversation_template()).text
