"""Templates as the trainer uses them: hand-written prompts and label masks per template, the
tokenizer's own chat template, the chat template saved with a model, and the refusal of a
template that does not fit the model."""

from __future__ import annotations

import pytest

from backend.core.model_card import TokenizerFacts, card_from_config
from backend.core.samples import IGNORE_INDEX, tokenize_sample
from backend.core.template_match import markers, template_problems
from backend.core.templates import TEMPLATES, chat_template_template, get_template, render, to_jinja

CONV = [{"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "A circle."}]
IM = ("<|im_start|>system\nBe brief.{s}<|im_start|>user\n<image>\nWhat colour?{s}<|im_start|>assistant\nRed.{s}"
      "<|im_start|>user\nAnd the shape?{s}<|im_start|>assistant\nA circle.{s}")
EXPECTED = {
    "internlm2-chat": ("<s>" + IM.format(s="<|im_end|>"), ["Red.<|im_end|>", "A circle.<|im_end|>"]),
    "Hermes-2": (IM.format(s="<|im_end|>"), ["Red.<|im_end|>", "A circle.<|im_end|>"]),
    "internvl2_5": (IM.format(s="<|im_end|>\n"), ["Red.<|im_end|>\n", "A circle.<|im_end|>\n"]),
    "phi3-chat": ("<|system|>\nBe brief.<|end|><|user|>\n<image>\nWhat colour?<|end|><|assistant|>\nRed.<|end|>"
                  "<|user|>\nAnd the shape?<|end|><|assistant|>\nA circle.<|end|>", ["Red.<|end|>", "A circle.<|end|>"]),
}
#: trained tokens where they differ from the trained characters: internvl2_5 leaves the last token of
#: each reply (the newline) untrained, as the reference's preprocess_internvl2_5 does
TRAINED_TOKENS = {"internvl2_5": ["Red.<|im_end|>", "A circle.<|im_end|>"]}
QWEN_LIKE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from worker.demo_model import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def label_runs(sample, tokenizer) -> list[str]:
    """The trained tokens, decoded, one string per contiguous run."""
    runs, cur = [], []
    for tok, lab in zip(sample.input_ids, sample.labels, strict=True):
        if lab != IGNORE_INDEX:
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer.decode(r) for r in runs]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_prompt_and_label_mask_per_template(name, tokenizer):
    text, trained = EXPECTED[name]
    rendered = render(CONV, get_template(name))
    assert rendered.text == text
    assert [rendered.text[a:b] for a, b in rendered.trained_spans] == trained
    sample = tokenize_sample({"image": "a.png", "conversations": CONV}, get_template(name), tokenizer, [2])
    assert label_runs(sample, tokenizer) == TRAINED_TOKENS.get(name, trained)
    assert sample.image_tokens == 2 * 256 + 2
    start, end = sample.image_spans[0]
    assert all(x == IGNORE_INDEX for x in sample.labels[start:end])


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_chat_template_saved_with_the_model_renders_like_training(name, tokenizer):
    tokenizer.chat_template = to_jinja(get_template(name))
    msgs = [{"role": "system" if t["from"] == "system" else "user" if t["from"] == "human" else "assistant",
             "content": t["value"]} for t in CONV]
    as_hf = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    ours = render(CONV[:-1], get_template(name), add_generation_prompt=True).text
    assert as_hf == ours.replace("<s>", tokenizer.bos_token)
    default = tokenizer.apply_chat_template(msgs[1:2], tokenize=False)
    assert get_template(name).system_message in default


def test_tokenizer_chat_template_labels_the_replies_and_their_closing(tokenizer):
    tokenizer.chat_template = QWEN_LIKE

    def apply(messages, add_generation_prompt):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    template = chat_template_template(apply, stop="<|im_end|>")
    rendered = render(CONV, template)
    assert rendered.text == IM.format(s="<|im_end|>\n")
    sample = tokenize_sample({"image": "a.png", "conversations": CONV}, template, tokenizer, [1])
    assert label_runs(sample, tokenizer) == ["Red.<|im_end|>\n", "A circle.<|im_end|>\n"]


def test_demo_tokenizer_template_equals_internlm2_chat(tokenizer, tmp_path):
    from worker.demo_model import build_tokenizer

    tok = build_tokenizer(tmp_path)
    template = chat_template_template(
        lambda m, g: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g), stop="<|im_end|>")
    conv = CONV[1:]
    assert render(conv, template) == render(conv, get_template("internlm2-chat"))


DEMO_CONFIG = {"model_type": "internvl", "template": "internlm2-chat", "text_config": {"model_type": "llama"}}


def card(config: dict, chat_template: str | None = None):
    """The model card of ``config`` with a tokenizer that has ``chat_template``."""
    return card_from_config(config, tokenizer=TokenizerFacts(chat_template=chat_template))


def default_template(config: dict, has_chat_template: bool) -> str | None:
    """The card's template when the user names none."""
    return card(config, QWEN_LIKE if has_chat_template else None).template


def test_matching_template_passes(tmp_path):
    from worker.demo_model import build_tokenizer

    tok = build_tokenizer(tmp_path)
    assert markers(get_template("phi3-chat")) == ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert template_problems("internlm2-chat", card(DEMO_CONFIG, tok.chat_template), tok.get_vocab().get) == []
    assert default_template(DEMO_CONFIG, True) == "internlm2-chat"


def test_mismatched_template_is_refused_with_each_reason(tokenizer, tmp_path):
    from worker.demo_model import build_tokenizer

    tok = build_tokenizer(tmp_path)
    problems = template_problems("phi3-chat", card(DEMO_CONFIG, tok.chat_template), tok.get_vocab().get)
    assert len(problems) == 2
    assert "declares 'internlm2-chat'" in problems[0]
    assert "<|user|>" in problems[1] and "chat template never writes" in problems[1]
    phi3 = {"model_type": "internvl_chat", "llm_config": {"architectures": ["Phi3ForCausalLM"]}}
    no_im = {k: v for k, v in tok.get_vocab().items() if k not in ("<|im_start|>", "<|im_end|>")}
    problems = template_problems("internlm2-chat", card(phi3), no_im.get)
    assert "phi3 language model" in problems[0]
    assert "<|im_start|>, <|im_end|>" in problems[1] and "does not have as a token" in problems[1]
    assert default_template(phi3, False) == "phi3-chat"


def test_tokenizer_template_needs_a_chat_template():
    hf = {"model_type": "internvl", "text_config": {"model_type": "qwen2"}}
    assert default_template(hf, True) == "tokenizer"
    assert default_template(hf, False) == "internvl2_5"
    assert "has none" in template_problems("tokenizer", card(hf), {}.get)[0]
    assert template_problems("tokenizer", card(hf, QWEN_LIKE), {}.get) == []
