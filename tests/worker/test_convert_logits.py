"""The converted native model computes what the original architecture computes: same logits (fp32,
1e-4) as an independent reference forward on the original tensors, on inputs with several tiles."""

from __future__ import annotations

import pytest
import torch
from convert_helpers import write_original
from convert_reference import image_features
from convert_reference import logits as reference_logits

from worker.convert import import_checkpoint

CASES = {
    # family: (vision style, select_layer, tied embeddings)
    "internlm2": ("300m", -1, False),
    "phi3": ("300m", -1, False),
    "qwen2": ("6b", -2, False),
    "llama": ("300m", -1, True),
}


def _inputs(tok: dict, tokens_per_tile: int, tiles: list[int], vocab: int, tail: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = tok["ids"]
    text = lambda n: torch.randint(3, 300, (n,), generator=g).tolist()  # noqa: E731
    seq = [tok["bos"]] if tok["bos"] is not None else []
    for n in tiles:
        seq += text(5) + [ids["<img>"]] + [ids["<IMG_CONTEXT>"]] * (tokens_per_tile * n) + [ids["</img>"]]
    seq += text(tail)
    assert max(seq) < vocab
    return torch.tensor(seq)


@pytest.mark.parametrize("family", sorted(CASES))
def test_converted_logits_match_the_original_architecture(tmp_path, family):
    from transformers import InternVLForConditionalGeneration

    style, select_layer, tied = CASES[family]
    src = tmp_path / "orig"
    cfg, weights, tok = write_original(src, family, vision_style=style, select_layer=select_layer, tied=tied)
    info = import_checkpoint(src, tmp_path / "native")
    assert (info.family, info.param_count) == (family, sum(t.numel() for t in weights.values()))

    model = InternVLForConditionalGeneration.from_pretrained(tmp_path / "native", dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings is tied
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))  # 3 tiles: 2 + 1 images
    # a short and a long input: Phi-3's rope switches factors past original_max_position_embeddings (64)
    for tail in (7, 60):
        ids = _inputs(tok, info.num_image_token, [2, 1], cfg["llm_config"]["vocab_size"], tail)
        with torch.no_grad():
            want = reference_logits(weights, cfg, ids, pixels, tok["ids"]["<IMG_CONTEXT>"])
            got = model(input_ids=ids[None], pixel_values=pixels).logits[0]
        assert got.shape == want.shape
        assert want.abs().max() > 0.1  # the comparison is not between near-zero numbers
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert not (src / "EXECUTED").exists()


def test_image_features_go_through_the_native_vision_path(tmp_path):
    """The projector output for each tile matches, so a wrong tile order or shuffle would show."""
    from transformers import InternVLForConditionalGeneration

    cfg, weights, _ = write_original(tmp_path / "orig", "internlm2")
    import_checkpoint(tmp_path / "orig", tmp_path / "native")
    model = InternVLForConditionalGeneration.from_pretrained(tmp_path / "native", dtype=torch.float32).eval()
    pixels = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.model.get_image_features(pixel_values=pixels).pooler_output
        want = image_features(weights, cfg, pixels)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
