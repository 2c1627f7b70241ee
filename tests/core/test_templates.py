"""Rendered prompts and label spans of every template equal hand-written strings."""

from __future__ import annotations

import pytest

from backend.core.samples import IGNORE_INDEX, SampleError, normalise_conversations, tokenize_sample
from backend.core.templates import INTERNVL_SYSTEM_MESSAGE, TemplateError, get_template, render

CONV = [{"from": "system", "value": "SYS"},
        {"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]

EXPECTED = {
    "internlm2-chat": (
        "<s><|im_start|>system\nSYS<|im_end|>"
        "<|im_start|>user\n<image>\nQ1<|im_end|><|im_start|>assistant\nA1<|im_end|>"
        "<|im_start|>user\nQ2<|im_end|><|im_start|>assistant\nA2<|im_end|>",
        ["A1<|im_end|>", "A2<|im_end|>"]),
    "Hermes-2": (
        "<|im_start|>system\nSYS<|im_end|>"
        "<|im_start|>user\n<image>\nQ1<|im_end|><|im_start|>assistant\nA1<|im_end|>"
        "<|im_start|>user\nQ2<|im_end|><|im_start|>assistant\nA2<|im_end|>",
        ["A1<|im_end|>", "A2<|im_end|>"]),
    "internvl2_5": (
        "<|im_start|>system\nSYS<|im_end|>\n"
        "<|im_start|>user\n<image>\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n",
        ["A1<|im_end|>\n", "A2<|im_end|>\n"]),
    "phi3-chat": (
        "<|system|>\nSYS<|end|>"
        "<|user|>\n<image>\nQ1<|end|><|assistant|>\nA1<|end|>"
        "<|user|>\nQ2<|end|><|assistant|>\nA2<|end|>",
        ["A1<|end|>", "A2<|end|>"]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rendered_prompt_and_spans(name):
    text, trained = EXPECTED[name]
    r = render(CONV, get_template(name))
    assert r.text == text
    assert [r.text[a:b] for a, b in r.trained_spans] == trained


def test_default_system_message_and_generation_prompt():
    r = render(CONV[1:3], get_template("internlm2-chat"), add_generation_prompt=True)
    assert r.text == (f"<s><|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|>"
                      "<|im_start|>user\n<image>\nQ1<|im_end|><|im_start|>assistant\nA1<|im_end|>"
                      "<|im_start|>assistant\n")


@pytest.mark.parametrize("conv", [
    [{"from": "gpt", "value": "A"}],
    [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q"}],
])
def test_render_refuses_bad_roles(conv):
    with pytest.raises(TemplateError):
        render(conv, get_template("Hermes-2"))


def test_unknown_template():
    with pytest.raises(TemplateError, match="known"):
        get_template("vicuna")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_token_labels_cover_exactly_the_answers(name, tokenizer):
    """Decoding the trained tokens gives back the answers and their separators, nothing else."""
    record = {"id": 1, "image": "a.png", "conversations": CONV}
    ts = tokenize_sample(record, get_template(name), tokenizer, [2], tokens_per_tile=4, with_offsets=True)
    trained = [t for t in ts.labels if t != IGNORE_INDEX]
    answers = EXPECTED[name][1]
    if get_template(name).untrained_last_token:  # internvl2_5: the newline after <|im_end|> is not trained
        answers = [a.removesuffix("\n") for a in answers]
    assert tokenizer.decode(trained) == "".join(answers)
    assert ts.image_tokens == 2 * 4 + 2 and ts.image_spans[0][1] - ts.image_spans[0][0] == 10
    start, end = ts.image_spans[0]
    assert ts.input_ids[start] == tokenizer.convert_tokens_to_ids("<img>")
    assert ts.input_ids[end - 1] == tokenizer.convert_tokens_to_ids("</img>")
    assert len(ts.offsets) == len(ts.input_ids)
    assert {ts.rendered[a:b] for a, b in ts.offsets[start:end]} == {"<image>"}
    assert ts.total_tokens == ts.text_tokens + ts.image_tokens


def test_labels_equal_the_naive_rule(tokenizer):
    """The bisect-based label rule equals 'a token is trained iff it lies inside a span'."""
    record = {"id": 1, "conversations": [{"from": "human", "value": "colour?"}, {"from": "gpt", "value": "red  \tgreen"},
                                         {"from": "human", "value": "shape?"}, {"from": "gpt", "value": "你是 star"}]}
    ts = tokenize_sample(record, get_template("Hermes-2"), tokenizer, [], with_offsets=True)
    for tok, lab, (a, b) in zip(ts.input_ids, ts.labels, ts.offsets, strict=True):
        inside = b > a and any(s <= a and b <= e for s, e in ts.trained_spans)
        assert lab == (tok if inside else IGNORE_INDEX)


def test_image_tag_rules():
    one = {"image": "a.png", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    assert normalise_conversations(one)[0]["value"] == "<image>\nQ"
    with pytest.raises(SampleError):
        normalise_conversations({**one, "image": ["a.png", "b.png"]})
    with pytest.raises(SampleError):
        normalise_conversations({"conversations": [{"from": "human", "value": "Q"},
                                                   {"from": "gpt", "value": "<image>"}], "image": "a.png"})
