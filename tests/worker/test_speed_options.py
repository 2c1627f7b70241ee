"""The speed options: refused cleanly where they cannot run, and doing what they say where they can
(checkpointing per part, the fused-loss plumbing, torch.compile) on the tiny demo model."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from pydantic import ValidationError

from backend.core.spec import Hyperparameters, max_tiles_per_pack
from worker.training import modeling, speed


def problems_of(**over) -> dict[str, str]:
    with pytest.raises(ValidationError) as e:
        Hyperparameters(**over)
    return {err["loc"][0]: err["msg"] for err in e.value.errors()}


@pytest.mark.parametrize("field", ["liger_kernels", "fused_cross_entropy"])
def test_gpu_only_kernels_are_refused_for_a_cpu_job(field):
    msg = problems_of(**{field: True})[field]
    assert "need GPUs" in msg and "CPU" in msg
    assert getattr(Hyperparameters(**{field: True, "gpus": 1}), field)


def test_packing_settings_that_cannot_apply_are_refused():
    assert "only applies with packing" in problems_of(max_tiles_per_pack=8)["max_tiles_per_pack"]
    msg = problems_of(packing=True, max_tiles_per_pack=4, max_dynamic_patch=6)["max_tiles_per_pack"]
    assert "less than the 7 tiles of one image" in msg
    assert "ZeRO-3" in problems_of(fused_cross_entropy=True, gpus=1, zero_stage=3)["fused_cross_entropy"]
    assert max_tiles_per_pack(Hyperparameters(packing=True, max_seq_length=8192)) == 32
    assert max_tiles_per_pack(Hyperparameters(packing=True, max_tiles_per_pack=12)) == 12


def test_missing_packages_are_refused_on_the_node_with_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    gpu = Hyperparameters(gpus=1, liger_kernels=True, attn_implementation="flash_attention_2")
    problems = speed.runtime_problems(gpu, use_gpu=True)
    assert len(problems) == 2 and all("pip install 'vlstudio[gpu]'" in p for p in problems)
    assert "liger-kernel" in problems[0] and "flash-attn" in problems[1]
    assert speed.runtime_problems(Hyperparameters(gpus=1, packing=True, attn_implementation="sdpa"), True) == []
    assert "varlen or flex_attention" in speed.packing_note(Hyperparameters(gpus=1, packing=True), "sdpa", True)
    assert speed.packing_note(Hyperparameters(gpus=1, packing=True), "varlen", True) is None
    assert speed.packing_note(Hyperparameters(packing=True), "sdpa", use_gpu=False) is None


@pytest.mark.parametrize("kernel", ["varlen", "flex_attention", "flash_attention_2"])
def test_gpu_only_attention_kernels_are_refused_for_a_cpu_job(kernel):
    msg = problems_of(attn_implementation=kernel)["attn_implementation"]
    assert f"{kernel} needs GPUs" in msg and "gpus 0" in msg
    assert Hyperparameters(attn_implementation=kernel, gpus=1).attn_implementation == kernel


@pytest.mark.parametrize(("flash", "varlen", "flex", "capability", "expect"), [
    (True, True, True, (9, 0), "flash_attention_2"),
    (False, True, True, (9, 0), "varlen"),
    (False, True, True, (7, 5), "flex_attention"),  # torch's flash kernels need 8.0+
    (False, False, True, (8, 0), "flex_attention"),
    (False, False, False, (8, 0), "sdpa"),
])
def test_auto_picks_the_fastest_kernel_the_gpu_node_runs(monkeypatch, flash, varlen, flex, capability, expect):
    from worker.training import attention

    monkeypatch.setattr(attention, "has_flash_attn", lambda: flash)
    monkeypatch.setattr(attention, "has_varlen", lambda: varlen)
    monkeypatch.setattr(attention, "has_flex", lambda: flex)
    monkeypatch.setattr(attention, "gpu_capability", lambda: capability)
    assert attention.choose("auto", use_gpu=True) == expect
    assert attention.choose("auto", use_gpu=False) == "sdpa"
    assert attention.choose("eager", use_gpu=True) == "eager"
    assert attention.per_part(expect)["vision_config"] == ("flash_attention_2" if flash else "sdpa")
    assert speed.runtime_problems(Hyperparameters(gpus=1, packing=True), use_gpu=True) == []  # auto never fails


def test_a_node_that_cannot_run_the_chosen_kernel_refuses_it_before_training(monkeypatch):
    from worker.training import attention

    monkeypatch.setattr(attention, "has_varlen", lambda: False)
    (msg,) = speed.runtime_problems(Hyperparameters(gpus=1, attn_implementation="varlen"), use_gpu=True)
    assert "torch.nn.attention.varlen" in msg and "flex_attention" in msg
    monkeypatch.setattr(attention, "has_varlen", lambda: True)
    monkeypatch.setattr(attention, "gpu_capability", lambda: (7, 0))
    (msg,) = speed.runtime_problems(Hyperparameters(gpus=1, attn_implementation="varlen"), use_gpu=True)
    assert "compute capability 8.0" in msg and "7.0" in msg
    monkeypatch.setattr(attention, "gpu_capability", lambda: (9, 0))
    assert speed.runtime_problems(Hyperparameters(gpus=1, attn_implementation="varlen"), use_gpu=True) == []
    # a spec written elsewhere (e.g. by hand) reaching a CPU node: the node refuses too
    assert "GPUs only" in attention.problems("flex_attention", use_gpu=False)[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from worker.demo_model import build_demo_model

    return str(build_demo_model(tmp_path_factory.mktemp("m") / "demo"))


def checkpointed(module) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) for m in module.modules())


@pytest.mark.parametrize(("over", "expect"), [({"grad_checkpoint": True}, (True, True)),
                                              ({"grad_checkpoint": True, "grad_checkpoint_vision": False}, (False, True)),
                                              ({"grad_checkpoint_vision": True}, (True, False)),
                                              ({}, (False, False))])
def test_gradient_checkpointing_switches_per_part(demo, over, expect):
    h = Hyperparameters(**over)
    model = modeling.load_model(demo, h, torch.float32, use_gpu=False)
    assert speed.apply_checkpointing(model, h) == expect
    assert (checkpointed(model.model.vision_tower), checkpointed(model.model.language_model)) == expect


def test_fused_loss_plumbing_equals_the_models_own_loss(demo):
    """The fused-loss path (hidden states, shift, per-token losses) with a plain-torch stand-in
    for Liger's kernel gives the logits path's per-token losses and the model's own loss."""
    model = modeling.load_model(demo, Hyperparameters(), torch.float32, use_gpu=False).eval()
    torch.manual_seed(0)
    ids = torch.randint(10, 500, (2, 24))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 20:] = -100
    count = int((labels[:, 1:] != -100).sum())

    def token_ce(weight, h, y):  # what Liger's kernel computes with reduction="none"
        return torch.nn.functional.cross_entropy(h @ weight.T, y, ignore_index=-100, reduction="none")

    with torch.no_grad():
        out = model(input_ids=ids, labels=labels, num_items_in_batch=count)
        hidden = model.model(input_ids=ids).last_hidden_state
        losses = speed.fused_token_losses(hidden, model.lm_head, labels, loss_fn=token_ce)
    assert losses.shape == (2, 23) and bool((losses[labels[:, 1:] == -100] == 0).all())
    reference = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2), labels[:, 1:],
                                                  ignore_index=-100, reduction="none")
    assert torch.allclose(losses, reference, atol=1e-5)
    assert float(losses.sum() / count) == pytest.approx(float(out.loss), abs=1e-5)

    def summed_ce(weight, h, y):  # reduction="sum", the trainer's token-mean path
        return token_ce(weight, h, y).sum()

    with torch.no_grad():
        fused = speed.fused_linear_cross_entropy(hidden, model.lm_head, labels, count, loss_fn=summed_ce)
    assert float(fused) == pytest.approx(float(out.loss), abs=1e-5)


@pytest.mark.slow
def test_torch_compile_keeps_the_loss_and_the_parameter_names(demo):
    h = Hyperparameters(torch_compile=True)
    model = modeling.load_model(demo, h, torch.float32, use_gpu=False).eval()
    ids = torch.randint(10, 500, (1, 16))
    with torch.no_grad():
        eager = model(input_ids=ids, labels=ids).loss
        names = list(model.state_dict())
        speed.apply_compile(model)
        compiled = model(input_ids=ids, labels=ids).loss
    assert float(compiled) == pytest.approx(float(eager), abs=1e-5)
    assert list(model.state_dict()) == names  # checkpoints and the final model load as before
    assert model.model.language_model._compiled_call_impl is not None


def test_model_flops_count_the_llm_per_token_and_the_vit_per_patch(demo):
    model = modeling.load_model(demo, Hyperparameters(), torch.float32, use_gpu=False)
    n_vit = sum(p.numel() for p in model.model.vision_tower.parameters())
    n_rest = sum(p.numel() for p in model.parameters()) - n_vit
    per_token, per_tile = speed.model_flops(model)
    assert per_token == 6 * n_rest and per_tile == 6 * n_vit * (32 * 32 + 1)  # 448 px / 14 px patches + CLS
