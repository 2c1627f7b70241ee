"""Bad input gives a clear ConversionError naming what is wrong, and leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from convert_helpers import write_original
from safetensors.torch import load_file, save_file

from worker.convert import ConversionError, detect_format, export_model, import_checkpoint


def _import_fails(src: Path, dst: Path, *needles: str) -> str:
    with pytest.raises(ConversionError) as err:
        import_checkpoint(src, dst)
    message = str(err.value)
    for needle in needles:
        assert needle in message, message
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if ".partial-" in p.name]  # no half-written folder
    return message


def _edit_config(src: Path, edit) -> None:
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (src / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def original(tmp_path) -> Path:
    write_original(tmp_path / "orig", "internlm2", shards=2)
    return tmp_path / "orig"


def test_missing_shard(original, tmp_path):
    (original / "model-00002-of-00002.safetensors").unlink()
    _import_fails(original, tmp_path / "out", "model.safetensors.index.json", "model-00002-of-00002.safetensors")


def test_mismatched_shape(original, tmp_path):
    path = original / "model-00002-of-00002.safetensors"
    tensors = load_file(str(path))
    name = next(n for n in tensors if n.endswith("attention.wqkv.weight"))
    tensors[name] = torch.zeros(tensors[name].shape[0] - 8, tensors[name].shape[1])
    save_file(tensors, str(path))
    _import_fails(original, tmp_path / "out", name, "[56, 32]", "[64, 32]")


def test_missing_tensor(original, tmp_path):
    path = original / "model-00001-of-00002.safetensors"
    tensors = load_file(str(path))
    tensors.pop("vision_model.encoder.layers.0.ls1")
    save_file(tensors, str(path))
    _import_fails(original, tmp_path / "out", "vision_model.encoder.layers.0.ls1")


def test_unknown_llm_architecture(original, tmp_path):
    _edit_config(original, lambda c: c["llm_config"].update(architectures=["MistralForCausalLM"]))
    _import_fails(original, tmp_path / "out", "llm_config.architectures[0]", "MistralForCausalLM")


@pytest.mark.parametrize("ps", ["v1", None])
def test_pixel_shuffle_v1_is_refused(original, tmp_path, ps):
    def edit(c):
        if ps is None:
            del c["ps_version"]  # the original config class defaults to v1
        else:
            c["ps_version"] = ps

    _edit_config(original, edit)
    _import_fails(original, tmp_path / "out", "ps_version", "'v1'", "v2")


def test_unknown_template(original, tmp_path):
    _edit_config(original, lambda c: c.update(template="vicuna_v1.1"))
    _import_fails(original, tmp_path / "out", "template", "vicuna_v1.1")


def test_tokenizer_without_image_tokens(original, tmp_path):
    cfg = json.loads((original / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < 420}
    (original / "tokenizer_config.json").write_text(json.dumps(cfg))
    _import_fails(original, tmp_path / "out", "<img>")


def _to_pickle(src: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for path in sorted(src.glob("*.safetensors")):
        weights.update(load_file(str(path)))
        path.unlink()
    (src / "model.safetensors.index.json").unlink()
    return weights


def test_pickle_checkpoint_is_loaded_with_weights_only(original, tmp_path):
    weights = _to_pickle(original)
    torch.save(weights, original / "pytorch_model.bin")
    info = import_checkpoint(original, tmp_path / "out")
    assert info.param_count == sum(t.numel() for t in weights.values())


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_not_run(original, tmp_path):
    weights = _to_pickle(original)
    marker = tmp_path / "PWNED"
    torch.save({**weights, "payload": _Evil(marker)}, original / "pytorch_model.bin")
    _import_fails(original, tmp_path / "out", "pytorch_model.bin", "refused", "weights_only")
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ConversionError, match="not a folder"):
        detect_format(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        detect_format(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    _import_fails(tmp_path / "empty", tmp_path / "out", "'llava'", "internvl_chat")
    (tmp_path / "empty" / "config.json").write_text("{not json")
    _import_fails(tmp_path / "empty", tmp_path / "out", "config.json")


def test_existing_destination_is_not_touched(original, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists"):
        import_checkpoint(original, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_export_errors(original, tmp_path):
    import_checkpoint(original, tmp_path / "native")
    with pytest.raises(ConversionError, match="unknown export format"):
        export_model(tmp_path / "native", tmp_path / "x", "gguf")
    with pytest.raises(ConversionError, match="not a native model folder"):
        export_model(original, tmp_path / "x", "original")
    (tmp_path / "native" / "model.safetensors").unlink()
    with pytest.raises(ConversionError):
        export_model(tmp_path / "native", tmp_path / "x", "original")
    assert not (tmp_path / "x").exists()


def test_native_model_with_no_original_layout_is_refused(original, tmp_path):
    """E.g. a vision tower with a final LayerNorm (use_mean_pooling false), which InternViT lacks."""
    import_checkpoint(original, tmp_path / "native")
    cfg = json.loads((tmp_path / "native" / "config.json").read_text())
    cfg["vision_config"]["use_mean_pooling"] = False
    (tmp_path / "native" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="use_mean_pooling.*'hf' format"):
        export_model(tmp_path / "native", tmp_path / "x", "original")
    assert not (tmp_path / "x").exists()


def test_failure_while_writing_weights_leaves_nothing(original, tmp_path, monkeypatch):
    import worker.convert.streaming as streaming
    from worker.convert.layout import split

    written = []

    def failing_split(link, tensor):
        if tensor.device.type != "meta":  # planning runs on meta tensors first; fail mid-write
            written.append(link.original)
            if len(written) == 40:
                raise OSError("disk full")
        return split(link, tensor)

    monkeypatch.setattr(streaming, "split", failing_split)
    with pytest.raises(OSError, match="disk full"):
        import_checkpoint(original, tmp_path / "out")
    assert len(written) == 40
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
