"""original -> native -> original gives the same tensors bit for bit and an equivalent config; native
folders import as they are; a fine-tuned native model exports to a working original checkpoint."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from convert_helpers import REMOTE_CODE, write_original
from convert_reference import logits as reference_logits
from safetensors import safe_open

from worker.convert import export_model, import_checkpoint
from worker.convert.configs import SOURCE_KEY, parse_original

FAMILIES = ["internlm2", "phi3", "qwen2", "llama"]


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_original_native_original_is_bit_identical(tmp_path, family):
    src = tmp_path / "orig"
    cfg, weights, _ = write_original(src, family, dtype=torch.bfloat16, shards=3, tied=family == "qwen2")
    calls = []
    info = import_checkpoint(src, tmp_path / "native", progress=lambda d, t, m: calls.append((d, t)),
                             max_shard_bytes=20_000)
    assert info.dtype == "bfloat16" and info.source_format == "original" and info.family == family
    native = read_weights(tmp_path / "native")
    assert len(list((tmp_path / "native").glob("model-*.safetensors"))) > 1  # sharded
    assert {t.dtype for t in native.values()} == {torch.bfloat16}
    assert calls and calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == sorted(d for d, _ in calls)

    result = export_model(tmp_path / "native", tmp_path / "back", "original", original_source=src)
    assert result.warnings == []
    back = read_weights(tmp_path / "back")
    assert set(back) == set(weights)
    assert all(bits(back[k]) == bits(weights[k]) for k in weights)
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == cfg
    for name in REMOTE_CODE + ("tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "back" / name).read_bytes() == (src / name).read_bytes()
    assert not (src / "EXECUTED").exists() and not (tmp_path / "back" / "EXECUTED").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_export_without_the_original_config_is_equivalent(tmp_path, family):
    """Without the stored original config (only the LLM family is known), the export still writes the
    same tensors and an equivalent config."""
    src = tmp_path / "orig"
    cfg, weights, _ = write_original(src, family)
    import_checkpoint(src, tmp_path / "native")
    config_path = tmp_path / "native" / "config.json"
    native_cfg = json.loads(config_path.read_text())
    del native_cfg[SOURCE_KEY]["config"]
    config_path.write_text(json.dumps(native_cfg))
    result = export_model(tmp_path / "native", tmp_path / "back", "original")
    assert result.warnings  # no remote code to copy: the user is told
    back = read_weights(tmp_path / "back")
    assert set(back) == set(weights) and all(torch.equal(back[k], weights[k]) for k in weights)
    out = json.loads((tmp_path / "back" / "config.json").read_text())
    a, b = parse_original(cfg), parse_original(out)
    assert (a.vision, a.text, a.scale, a.select_layer, a.template, a.image_size, a.tiling) == \
        (b.vision, b.text, b.scale, b.select_layer, b.template, b.image_size, b.tiling)
    for key in ("rope_theta", "rope_scaling", "max_position_embeddings", "rms_norm_eps", "eos_token_id",
                "original_max_position_embeddings"):
        assert out["llm_config"].get(key) == cfg["llm_config"].get(key), key
    assert out["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"


def test_fine_tuned_native_model_exports_to_a_working_original(tmp_path):
    """Change the weights the way training does (save_pretrained of the native class), export, and
    run the reference forward on the exported original tensors: it matches the native model."""
    from transformers import InternVLForConditionalGeneration

    src = tmp_path / "orig"
    cfg, _, tok = write_original(src, "internlm2")
    import_checkpoint(src, tmp_path / "native")
    model = InternVLForConditionalGeneration.from_pretrained(tmp_path / "native", dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "tuned")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / "tuned" / name).write_bytes((tmp_path / "native" / name).read_bytes())
    export_model(tmp_path / "tuned", tmp_path / "export", "original", original_source=src)
    exported = read_weights(tmp_path / "export")
    expected = copy.deepcopy(cfg)  # the same config; the tiny weights are float32, and the export says so
    for part in (expected, expected["llm_config"], expected["vision_config"]):
        part["torch_dtype"] = "float32"
    assert json.loads((tmp_path / "export" / "config.json").read_text()) == expected
    ctx = tok["ids"]["<IMG_CONTEXT>"]
    ids = torch.tensor([1, 5, 6, tok["ids"]["<img>"]] + [ctx] * 8 + [tok["ids"]["</img>"], 7, 8, 9])
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(input_ids=ids[None], pixel_values=pixels).logits[0]
        got = reference_logits(exported, json.loads((tmp_path / "export" / "config.json").read_text()), ids,
                               pixels, ctx)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_native_folders_import_as_they_are_and_export_as_hf(tmp_path):
    src = tmp_path / "orig"
    write_original(src, "phi3")
    first = import_checkpoint(src, tmp_path / "native")
    again = import_checkpoint(tmp_path / "native", tmp_path / "native2")
    assert again.source_format == "hf"
    same = ("family", "template", "param_count", "dtype", "image_token_id", "num_image_token", "max_dynamic_patch",
            "use_thumbnail", "vision_hidden_size", "text_hidden_size", "text_layers")
    assert {k: getattr(again, k) for k in same} == {k: getattr(first, k) for k in same}
    out = export_model(tmp_path / "native", tmp_path / "hf", "hf")
    assert out.format == "hf"
    assert read_weights(tmp_path / "hf").keys() == read_weights(tmp_path / "native").keys()


def test_native_import_unties_a_separate_lm_head_that_the_config_would_tie(tmp_path):
    """The trap: InternVLConfig ties embeddings unless told otherwise, which would silently replace a
    checkpoint's own lm_head with the embedding matrix."""
    from transformers import InternVLForConditionalGeneration

    write_original(tmp_path / "orig", "llama")
    import_checkpoint(tmp_path / "orig", tmp_path / "native")
    path = tmp_path / "native" / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["tie_word_embeddings"]
    del cfg["text_config"]["tie_word_embeddings"]
    path.write_text(json.dumps(cfg))
    import_checkpoint(tmp_path / "native", tmp_path / "fixed")
    assert json.loads((tmp_path / "fixed" / "config.json").read_text())["tie_word_embeddings"] is False
    model = InternVLForConditionalGeneration.from_pretrained(tmp_path / "fixed")
    head = read_weights(tmp_path / "native")["language_model.lm_head.weight"]
    assert torch.equal(model.lm_head.weight, head)
    assert not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)


def test_a_native_model_never_imported_exports_as_llama_and_reimports(tmp_path):
    """A native model with no record of an original (like the demo model): its Llama text model goes
    out as an original LlamaForCausalLM checkpoint, which imports back to the same logits."""
    from transformers import InternVLForConditionalGeneration

    write_original(tmp_path / "orig", "internlm2")
    import_checkpoint(tmp_path / "orig", tmp_path / "native")
    path = tmp_path / "native" / "config.json"
    cfg = json.loads(path.read_text())
    del cfg[SOURCE_KEY]
    path.write_text(json.dumps(cfg))
    export_model(tmp_path / "native", tmp_path / "export", "original")
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["llm_config"]["architectures"] == ["LlamaForCausalLM"]
    info = import_checkpoint(tmp_path / "export", tmp_path / "again")
    assert info.family == "llama"
    a = InternVLForConditionalGeneration.from_pretrained(tmp_path / "native", dtype=torch.float32).eval()
    b = InternVLForConditionalGeneration.from_pretrained(tmp_path / "again", dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=0, rtol=0)


def test_native_pickle_weights_become_safetensors(tmp_path):
    write_original(tmp_path / "orig", "qwen2")
    import_checkpoint(tmp_path / "orig", tmp_path / "native")
    weights = read_weights(tmp_path / "native")
    for path in (tmp_path / "native").glob("*.safetensors"):
        path.unlink()
    for path in (tmp_path / "native").glob("*.index.json"):
        path.unlink()
    torch.save(weights, tmp_path / "native" / "pytorch_model.bin")
    info = import_checkpoint(tmp_path / "native", tmp_path / "again")
    assert info.source_format == "hf"
    again = read_weights(tmp_path / "again")
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)
    assert not list((tmp_path / "again").glob("*.bin"))
