"""Every family of the registry against genuine original-format tiny checkpoints built by InternVL's
own classes (tests/data/families, tools/make_family_fixtures.py): the import computes the original
model's logits (1e-4) and tokenizes as the original tokenizer does; export gives the original back
bit for bit; the InternVL3.5-style -hf checkpoint imports with its own chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from backend.core.families import FAMILIES
from backend.core.templates import TOKENIZER_TEMPLATE
from worker.convert import export_model, import_checkpoint

DATA = Path(__file__).resolve().parents[1] / "data" / "families"
REF = DATA / "reference"


#: texts whose ids may differ from the original tokenizer's (docs/models.md, Known limits); none now
KNOWN_DIFFERENCES: dict[str, set[str]] = {}


def reference(name: str) -> tuple[dict, dict]:
    return load_file(str(REF / f"{name}.safetensors")), json.loads((REF / f"{name}.json").read_text("utf-8"))


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def logits(native: Path, ref: dict) -> torch.Tensor:
    from transformers import InternVLForConditionalGeneration

    model = InternVLForConditionalGeneration.from_pretrained(native, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ref["input_ids"][None], pixel_values=ref["pixel_values"]).logits[0][ref["rows"]]


def test_every_family_has_its_genuine_checkpoint():
    assert set(FAMILIES) == {p.name for p in DATA.iterdir() if (p / "config.json").exists()} - {"hf_qwen3"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_reproduces_the_original_logits_and_tokens(tmp_path, family):
    from transformers import AutoTokenizer

    ref, facts = reference(family)
    info = import_checkpoint(DATA / family, tmp_path / "native")
    assert info.family == family and info.source_format == "original"
    assert info.param_count == facts["param_count"] == info.shapes["total_params"]
    got = logits(tmp_path / "native", ref)
    assert ref["logits"].abs().max() > 1.0  # far from zero: the comparison means something
    torch.testing.assert_close(got, ref["logits"], atol=1e-4, rtol=0)

    tok = AutoTokenizer.from_pretrained(tmp_path / "native")
    differ = {text for text, want, want_special in zip(facts["texts"], facts["ids"], facts["ids_with_special"],
                                                         strict=True)
              if tok(text, add_special_tokens=False)["input_ids"] != want or tok(text)["input_ids"] != want_special}
    assert differ == KNOWN_DIFFERENCES.get(family, set())
    assert tok(facts["prompt"], add_special_tokens=False)["input_ids"] == facts["prompt_ids"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_gives_the_original_back_bit_for_bit(tmp_path, family):
    src = DATA / family
    import_checkpoint(src, tmp_path / "native")
    result = export_model(tmp_path / "native", tmp_path / "back", "original", original_source=src)
    assert result.warnings == []
    want, got = tensors(src), tensors(tmp_path / "back")
    assert set(got) == set(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name].view(torch.uint8), t.view(torch.uint8)), name
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == json.loads((src / "config.json").read_text())


def test_hf_checkpoint_imports_with_its_own_chat_template(tmp_path):
    from transformers import AutoTokenizer

    ref, facts = reference("hf_qwen3")
    src = tmp_path / "InternVL3_5-tiny-hf"
    shutil.copytree(DATA / "hf_qwen3", src)
    info = import_checkpoint(src, tmp_path / "native")
    assert (info.family, info.text_model_type, info.template) == ("qwen3", "qwen3", TOKENIZER_TEMPLATE)
    assert info.param_count == facts["param_count"] == info.shapes["total_params"]
    torch.testing.assert_close(logits(tmp_path / "native", ref), ref["logits"], atol=1e-4, rtol=0)
    tok = AutoTokenizer.from_pretrained(tmp_path / "native")
    msgs = [{"role": "user", "content": "What is in the picture?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == facts["prompt"]
    assert "template" not in json.loads((tmp_path / "native" / "config.json").read_text())
