"""Token ids and labels equal to those of InternVL's own code, and the converted tokenizers equal
to the originals, on data made by the reference itself (tools/reference_preprocess.py, commit
and transformers version recorded in tests/data/reference/reference.json).

For every template, every conversation (single and multi-turn, multi-image, pure text, whitespace,
a system turn, truncation): the studio's ``tokenize_sample`` with the tokenizer that the import
builds from the original folder gives the reference's ``input_ids``, and its labels equal the
reference's. The one deliberate difference: where the reference's token counting disagrees with
its own ids it zeroes every label of the sample ("tokenization mismatch ... (ignored)"); the
studio trains such a sample on its replies (docs/training.md).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from backend.core.samples import IGNORE_INDEX, tokenize_sample
from backend.core.templates import get_template
from worker.convert.tokenizer import build_tokenizer

DATA = Path(__file__).resolve().parents[1] / "data" / "reference"
REFERENCE = json.loads((DATA / "reference.json").read_text())
FAMILY = {"internlm2": "internlm2", "internlm2_nodummy": "internlm2", "phi3": "phi3", "qwen2": "qwen2"}
CASES = [(template, case["name"]) for template, v in REFERENCE["templates"].items() for case in v["cases"]]


@functools.cache
def studio_tokenizer(folder: str, template: str):
    return build_tokenizer(DATA / "tokenizers" / folder, FAMILY[folder], get_template(template))


def case_of(template: str, name: str) -> tuple[dict, dict]:
    entry = REFERENCE["templates"][template]
    return entry, next(c for c in entry["cases"] if c["name"] == name)


def studio(template: str, name: str) -> tuple[list[int], list[int], dict]:
    entry, case = case_of(template, name)
    tmpl = template.split("@")[0]
    tok = studio_tokenizer(entry["tokenizer"], tmpl)
    record = {"conversations": case["conversations"]}
    if case["tiles"] is not None:
        record["image"] = [f"{i}.png" for i in range(len(case["tiles"]))]
    s = tokenize_sample(record, get_template(tmpl), tok, case["tiles"] or [], case["tokens_per_tile"])
    n = case["max_length"] or len(s.input_ids)
    return s.input_ids[:n], s.labels[:n], case


def reference_zeroed(case: dict) -> bool:
    return case["max_length"] is None and all(x == IGNORE_INDEX for x in case["labels"])


@pytest.mark.parametrize(("template", "name"), CASES)
def test_ids_and_labels_equal_the_reference(template, name):
    ids, labels, case = studio(template, name)
    assert ids == case["input_ids"]
    if reference_zeroed(case):  # the reference's counting failed; the studio trains the replies
        assert any(x != IGNORE_INDEX for x in labels)
        return
    assert labels == case["labels"]


def test_the_reference_data_compares_labels_for_every_template():
    """Guard against reference data that zeroes everything and so compares nothing."""
    for template in REFERENCE["templates"]:
        compared = [c for c in REFERENCE["templates"][template]["cases"] if not reference_zeroed(c)]
        assert len(compared) >= 3, template


@pytest.mark.parametrize("folder", list(REFERENCE["tokenizers"]))
def test_converted_tokenizer_ids_equal_the_original(folder):
    tok = studio_tokenizer(folder, "internlm2-chat")
    for probe in REFERENCE["tokenizers"][folder]:
        assert tok(probe["text"], add_special_tokens=False)["input_ids"] == probe["ids"], repr(probe["text"])
        assert tok(probe["text"])["input_ids"] == probe["ids_with_special"], repr(probe["text"])
