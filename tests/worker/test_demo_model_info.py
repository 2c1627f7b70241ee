"""The sizes the API shows for the built-in model (it has no torch to count them) are those of
the model the worker builds."""

from __future__ import annotations

import json
from pathlib import Path

from backend.core.model_shapes import shapes_from_config
from backend.services.memory import arch_for
from backend.services.models import DEMO_MODEL_INFO


def test_registered_sizes_match_the_built_demo_model(tmp_path: Path):
    from transformers import InternVLForConditionalGeneration

    from worker.demo_model import build_demo_model

    model = InternVLForConditionalGeneration.from_pretrained(build_demo_model(tmp_path / "m"))
    vit = sum(p.numel() for p in model.model.vision_tower.parameters())
    mlp = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    total = sum(p.numel() for p in model.parameters())
    arch = DEMO_MODEL_INFO["arch"]
    assert DEMO_MODEL_INFO["num_parameters"] == total
    assert (arch["vit_params"], arch["mlp_params"], arch["llm_params"]) == (vit, mlp, total - vit - mlp)
    cfg = model.config
    assert (arch["vit_hidden"], arch["vit_layers"]) == (cfg.vision_config.hidden_size,
                                                        cfg.vision_config.num_hidden_layers)
    assert (arch["llm_hidden"], arch["llm_layers"], arch["vocab"]) == (
        cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.text_config.vocab_size)
    assert arch_for(DEMO_MODEL_INFO) is not None  # the Train page's memory estimate
    shapes = shapes_from_config(json.loads((tmp_path / "m" / "config.json").read_text()))
    assert (shapes.vision_params, shapes.projector_params, shapes.text_params) == (vit, mlp, total - vit - mlp)


def test_callers_at_the_same_moment_build_the_demo_model_once(tmp_path: Path, monkeypatch):
    """A worker's first demo job, evaluation and chat may ask for the built-in model at once
    (threads of one process): one builds, the others wait for it and get the same folder."""
    import threading
    import time

    from worker import demo_model

    builds = []

    def slow_build(out_dir: Path) -> Path:  # the files ensure_demo_model looks for, slowly
        builds.append(out_dir)
        out_dir.mkdir(parents=True)
        time.sleep(0.5)  # the others arrive while it builds (importing transformers, in the product)
        for name in ("config.json", "tokenizer.json"):
            (out_dir / name).write_text("{}")
        return out_dir

    monkeypatch.setattr(demo_model, "build_demo_model", slow_build)
    results, errors = [], []

    def ask() -> None:
        try:
            results.append(demo_model.ensure_demo_model(tmp_path / "models"))
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(builds) == 1
    assert results == [tmp_path / "models" / demo_model.DEMO_MODEL_NAME] * 3
    assert (results[0] / "config.json").exists()
