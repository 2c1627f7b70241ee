"""The job spec and its presets: what a user can ask for, what is refused, what is derived."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.core.presets import PRESETS, resolve
from backend.core.spec import Hyperparameters, TrainingSpec


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates(name):
    h = resolve(name)
    assert h.effective_global_batch_size == (h.global_batch_size or h.per_device_batch_size * h.world_size)


def test_presets_are_the_seeds_scripts():
    assert {"demo", "2b-full", "4b-full", "2b-2nd-full", "4b-2nd-full", "2b-lora", "4b-lora"} <= set(PRESETS)
    full = resolve("2b-full")
    assert (full.learning_rate, full.warmup_ratio, full.lr_scheduler_type, full.weight_decay) == (4e-5, 0.03, "cosine",
                                                                                                    0.01)
    assert (full.drop_path_rate, full.max_dynamic_patch, full.max_seq_length, full.zero_stage) == (0.1, 12, 8192, 1)
    assert full.grad_checkpoint and full.group_by_length and full.report_to == "tensorboard"
    assert not (full.freeze_backbone or full.freeze_mlp or full.freeze_llm)
    assert resolve("4b-full").weight_decay == 0.05
    second = resolve("4b-2nd-full")
    assert second.freeze_backbone and second.max_seq_length == 4096 and second.global_batch_size == 128
    lora = resolve("2b-lora")
    assert lora.freeze_backbone and lora.freeze_mlp and lora.freeze_llm
    assert (lora.use_llm_lora, lora.lora_alpha, lora.lora_dropout, lora.drop_path_rate) == (16, 32, 0.05, 0.0)
    assert (lora.global_batch_size, lora.nproc_per_node) == (16, 2)


def test_global_batch_is_kept_when_the_gpu_count_changes():
    assert resolve("2b-full").gradient_accumulation_steps == 1024 // (4 * 8)
    two = resolve("2b-full", {"gpus": 2, "nproc_per_node": 2})
    assert two.gradient_accumulation_steps == 128 and two.effective_global_batch_size == 1024
    nodes = resolve("2b-full", {"nnodes": 16})
    assert nodes.gradient_accumulation_steps == 2 and nodes.derived()["world_size"] == 128
    assert resolve("2b-lora").derived() == {"world_size": 2, "gradient_accumulation_steps": 2,
                                            "effective_global_batch_size": 16, "precision": "bf16",
                                            "tokens_per_tile": 256}


def test_every_problem_is_listed_at_once_under_its_field():
    with pytest.raises(ValidationError) as e:
        Hyperparameters(min_dynamic_patch=8, max_dynamic_patch=4, global_batch_size=7, per_device_batch_size=2,
                        nproc_per_node=2, freeze_backbone=True, freeze_mlp=True, freeze_llm=True, merge_lora=True,
                        offload="optimizer+parameters", zero_stage=2, force_image_size=450, template="chatml",
                        unfreeze_lm_head=False, attn_implementation="flash_attention_2")
    fields = {err["loc"][0] for err in e.value.errors()}
    assert fields == {"min_dynamic_patch", "global_batch_size", "freeze_llm", "merge_lora", "offload",
                      "force_image_size", "template", "attn_implementation"}


@pytest.mark.parametrize(("overrides", "field"), [
    ({"use_llm_lora": 16}, "use_llm_lora"),  # LoRA on an LLM that would also train fully
    ({"use_backbone_lora": 8}, "use_backbone_lora"),
    ({"unfreeze_vit_layers": 4}, "unfreeze_vit_layers"),  # without freeze_backbone it means nothing
    ({"unfreeze_lm_head": True}, "unfreeze_lm_head"),
    ({"lora_alpha": 32}, "lora_alpha"),
    ({"max_steps": 0}, "max_steps"),
    ({"gpus": 4, "nproc_per_node": 2}, "nproc_per_node"),
    ({"offload": "optimizer", "zero_stage": 0}, "offload"),
    ({"vision_select_layer": 0}, "vision_select_layer"),
    ({"max_dynamic_patch": 12, "max_seq_length": 2048}, "max_seq_length"),  # 13 tiles x 256 > 2048
])
def test_inconsistent_switches_are_refused(overrides, field):
    with pytest.raises(ValidationError) as e:
        resolve("demo", overrides)
    assert [err["loc"][0] for err in e.value.errors()] == [field]


def test_partial_unfreezing_and_lora_alone_are_trainable():
    resolve("demo", {"freeze_backbone": True, "freeze_mlp": True, "freeze_llm": True, "unfreeze_lm_head": True})
    resolve("demo", {"freeze_backbone": True, "freeze_mlp": True, "freeze_llm": True, "unfreeze_vit_layers": 2})
    resolve("demo", {"freeze_backbone": True, "freeze_mlp": True, "freeze_llm": True, "use_backbone_lora": 8})
    assert resolve("demo", {"template": "tokenizer"}).template == "tokenizer"
    assert resolve("demo", {"force_image_size": 224}).derived()["tokens_per_tile"] == 64


def test_every_switch_is_described_for_the_form():
    props = Hyperparameters.model_json_schema()["properties"]
    for name in ("freeze_llm", "freeze_mlp", "freeze_backbone", "unfreeze_vit_layers", "unfreeze_lm_head",
                 "use_backbone_lora", "use_llm_lora", "vision_select_layer", "drop_path_rate", "grad_checkpoint",
                 "max_seq_length", "max_dynamic_patch", "use_thumbnail", "min_dynamic_patch", "force_image_size",
                 "lr_scheduler_type", "warmup_ratio", "weight_decay", "num_train_epochs", "max_steps", "save_steps",
                 "save_total_limit", "seed", "zero_stage", "offload", "report_to", "group_by_length"):
        assert props[name].get("description"), name


def test_spec_round_trips_through_its_file(tmp_path):
    spec = TrainingSpec(job_id=3, model_path="/m", template="phi3-chat", meta_path="/r/meta.json", output_dir="/r",
                        hyper=resolve("4b-lora"), resume_from_checkpoint="latest")
    spec.write(tmp_path / "spec.json")
    assert TrainingSpec.read(tmp_path / "spec.json") == spec


def test_field_and_combination_problems_come_in_one_pass():
    """A wrong type stops pydantic before the combination checks; ``problems`` reports both, so
    the user does not discover the combination problems only after fixing the field."""
    from backend.core.presets import problems

    found = problems("demo", {"learning_rate": "fast", "warmup_ratio": -1, "use_llm_lora": 16, "max_steps": 0})
    fields = [p["field"] for p in found]
    assert fields[:2] == ["learning_rate", "warmup_ratio"] and set(fields[2:]) == {"use_llm_lora", "max_steps"}
    assert problems("demo", {"learning_rate": "fast"}) == [found[0]]  # no spurious combination problem
    assert problems("demo", {}) == []
    assert problems("nope", {})[0]["field"] == "preset"
