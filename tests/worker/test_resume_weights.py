"""Reading a checkpoint's weights back (worker.training.resume), in process on the tiny demo model:
through the key mapping ``save_pretrained`` wrote them with, every tensor, and a checkpoint that
does not fit the model is an error naming what differs (the run's resume equality itself is in
test_training_runs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.core.spec import Hyperparameters
from worker.training import lora, modeling, resume


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from worker.demo_model import build_demo_model

    return str(build_demo_model(tmp_path_factory.mktemp("m") / "demo"))


def fresh(demo, **over):
    h = Hyperparameters(**over)
    model = modeling.load_model(demo, h, torch.float32, use_gpu=False)
    modeling.apply_freezing(model, h)
    return lora.add_lora(model, h) if h.uses_lora else model


def perturb(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))


def test_full_model_is_read_back_through_the_layout_it_was_written_in(demo, tmp_path):
    trained = fresh(demo)
    perturb(trained)
    trained.save_pretrained(tmp_path / "ckpt")
    on_disk = set(load_file(str(tmp_path / "ckpt" / "model.safetensors")))
    assert set(resume.written_names(trained).values()) == on_disk
    assert any(k.startswith("language_model.model.") for k in on_disk)  # the original layout, not the modules'
    # what the Trainer itself does without DeepSpeed: nothing of it loads
    plain = fresh(demo)
    result = plain.load_state_dict(load_file(str(tmp_path / "ckpt" / "model.safetensors")), strict=False)
    assert len(result.missing_keys) == len(plain.state_dict())

    model = fresh(demo)
    assert resume.problems(model, tmp_path / "ckpt") == []
    assert resume.load_weights(model, tmp_path / "ckpt") == len(on_disk)
    want, got = trained.state_dict(), model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_lora_adapter_and_saved_modules_are_read_back(demo, tmp_path):
    over = dict(freeze_backbone=True, freeze_llm=True, use_llm_lora=4, use_backbone_lora=2)
    trained = fresh(demo, **over)
    perturb(trained)  # LoRA A/B and the projector trained beside them (modules_to_save)
    trained.save_pretrained(tmp_path / "ckpt")
    model = fresh(demo, **over)
    resume.load_weights(model, tmp_path / "ckpt")
    want, got = trained.state_dict(), model.state_dict()
    changed = [k for k in want if "lora_" in k or "modules_to_save" in k]
    assert changed and all(torch.equal(want[k], got[k]) for k in want)


def test_a_checkpoint_that_does_not_fit_is_an_error_naming_what_differs(demo, tmp_path):
    model = fresh(demo)
    model.save_pretrained(tmp_path / "full")
    saved = load_file(str(tmp_path / "full" / "model.safetensors"))

    def variant(name: str, tensors: dict) -> Path:
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
        return tmp_path / name

    head = "language_model.lm_head.weight"
    missing = variant("missing", {k: v for k, v in saved.items() if k != head})
    extra = variant("extra", {**saved, "language_model.model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)})
    shaped = variant("shaped", {**saved, head: saved[head][:-1].clone()})
    assert resume.problems(model, missing) == [f"1 of the model's tensors are not in it (first: {head})"]
    assert resume.problems(model, extra) == ["1 of its tensors are not the model's "
                                             "(first: language_model.model.layers.9.mlp.up_proj.weight)"]
    rows, width = saved[head].shape
    assert resume.problems(model, shaped) == [f"1 tensors have another shape (first: {head} [{rows - 1}, {width}] "
                                              f"where the model has [{rows}, {width}])"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(resume.CheckpointMismatch, match="does not fit the model"):
        resume.load_weights(model, shaped)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded

    adapter = fresh(demo, freeze_llm=True, use_llm_lora=4)
    adapter.save_pretrained(tmp_path / "adapter")
    assert resume.problems(model, tmp_path / "adapter") == [
        "the run trains the full model but the checkpoint holds a LoRA adapter (adapter_model.safetensors), "
        "not model.safetensors"]
    assert resume.problems(adapter, tmp_path / "full") == [
        "the run trains a LoRA adapter but the checkpoint holds a full model (model.safetensors), "
        "not adapter_model.safetensors"]
    other_rank = fresh(demo, freeze_llm=True, use_llm_lora=8)
    assert "another shape" in resume.problems(other_rank, tmp_path / "adapter")[0]


@pytest.mark.slow
def test_the_trainer_refuses_to_resume_from_a_checkpoint_that_does_not_fit(demo, tmp_path):
    """The program, not a warning in its log: exit 2, the reason, no step trained."""
    from tests.worker.test_training_runs import run, write_data, write_spec

    adapter = fresh(demo, freeze_llm=True, use_llm_lora=4)
    adapter.save_pretrained(tmp_path / "ckpt")
    spec = write_spec(tmp_path / "run", Path(demo), write_data(tmp_path / "data"), resume=str(tmp_path / "ckpt"),
                      nproc_per_node=1, max_steps=2, zero_stage=0)
    rc, log = run(spec, timeout=180, nproc=1)  # as the worker launches it: torchrun
    assert rc != 0, log[-3000:]
    assert (f"cannot resume from {tmp_path / 'ckpt'}: the run trains the full model but the checkpoint holds a "
            "LoRA adapter") in log
    assert "step 1/" not in log and not (tmp_path / "run" / "final").exists()
