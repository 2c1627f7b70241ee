"""The one record -> ids implementation (backend.core.samples) tokenizes text around images in
chunks; with the converted real-family tokenizers the result must equal tokenizing the whole
expanded prompt at once (Phi-3's non-legacy sentencepiece adds no word marker after </img>)."""

from __future__ import annotations

import pytest
from convert_helpers import write_original
from transformers import AutoTokenizer

from backend.core.samples import IMG_CONTEXT, IMG_END, IMG_START, tokenize_sample
from backend.core.templates import get_template, render
from worker.convert import import_checkpoint

RECORD = {"id": 1, "image": ["a.png", "b.png"], "conversations": [
    {"from": "human", "value": "<image>\nFirst picture, then <image>\twhat  differs? 123"},
    {"from": "gpt", "value": "The second one is 2x larger."},
    {"from": "human", "value": "And the colour?"},
    {"from": "gpt", "value": "Both are red."}]}


@pytest.mark.parametrize("family, template", [("phi3", "phi3-chat"), ("internlm2", "internlm2-chat"),
                                              ("qwen2", "Hermes-2")])
def test_chunked_tokenization_equals_whole_prompt(tmp_path, family, template):
    write_original(tmp_path / "src", family)
    import_checkpoint(tmp_path / "src", tmp_path / "native")
    tok = AutoTokenizer.from_pretrained(tmp_path / "native")
    tpl = get_template(template)
    sample = tokenize_sample(RECORD, tpl, tok, [1, 2], tokens_per_tile=3)
    text = render(RECORD["conversations"], tpl).text
    parts = text.split("<image>")
    expanded = parts[0] + IMG_START + IMG_CONTEXT * 3 + IMG_END + parts[1] + IMG_START + IMG_CONTEXT * 6 + IMG_END
    expanded += parts[2]
    whole = tok(expanded, add_special_tokens=False)["input_ids"]
    assert sample.input_ids == whole
    trained = tok.decode([t for t in sample.labels if t != -100])
    assert "The second one is 2x larger." in trained and "Both are red." in trained
    assert "colour" not in trained
