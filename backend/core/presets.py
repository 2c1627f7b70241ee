"""Presets as data, named after the seed's scripts. The UI and the API read them; a test
checks that each one validates."""

from __future__ import annotations

from typing import Any

from backend.core.model_card import ModelCard, Tiling, layered_tiling
from backend.core.spec import Hyperparameters, fill_tiling, spec_problems

# What every script of the seed sets (``internvl_chat/shell/mini_internvl_chat_v1_5/``): bf16 on
# GPU, 448 px tiles with thumbnail, max 12 tiles, drop path 0.1, grad checkpointing, ZeRO-1,
# length-grouped batches, save every 200 steps keeping 3, TensorBoard.
_SEED: dict[str, Any] = {
    "learning_rate": 4e-5, "warmup_ratio": 0.03, "lr_scheduler_type": "cosine", "num_train_epochs": 1.0,
    "per_device_batch_size": 4, "max_dynamic_patch": 12, "min_dynamic_patch": 1, "use_thumbnail": True,
    "dynamic_image_size": True, "drop_path_rate": 0.1, "grad_checkpoint": True, "group_by_length": True,
    "zero_stage": 1, "save_steps": 200, "save_total_limit": 3, "logging_steps": 1, "report_to": "tensorboard",
    "dataloader_num_workers": 4, "gpus": 8, "nproc_per_node": 8,
    # The V1.5 scripts' loss: HF Trainer's per-micro-batch token mean, averaged over micro-batches and ranks.
    "loss_reduction": "micro_batch_mean",
}
_WD = {"2b": 0.01, "4b": 0.05}  # the 2B (InternLM2) and 4B (Phi-3) scripts differ only here

PRESETS: dict[str, dict[str, Any]] = {
    # Small, fast CPU run for the built-in tiny demo model.
    "demo": {"max_steps": 20, "learning_rate": 2e-3, "per_device_batch_size": 2, "zero_stage": 2,
             "nproc_per_node": 2, "max_dynamic_patch": 2, "max_seq_length": 2048, "warmup_ratio": 0.0},
}
for _size, _wd in _WD.items():
    # The seed's fine-tune: nothing frozen, global batch 1024 (the seed ran 128 GPUs = 16 nodes x 8;
    # on one 8-GPU node the same global batch means 32 accumulation steps).
    PRESETS[f"{_size}-full"] = {**_SEED, "weight_decay": _wd, "global_batch_size": 1024, "max_seq_length": 8192}
    # "2nd fine-tune" of the released checkpoints: backbone frozen, 8 GPUs, global batch 128.
    PRESETS[f"{_size}-2nd-full"] = {**_SEED, "weight_decay": _wd, "global_batch_size": 128, "max_seq_length": 4096,
                                    "freeze_backbone": True}
    # LoRA 2nd fine-tune: ViT, MLP and LLM frozen, LLM LoRA rank 16 (alpha 32, dropout 0.05), 2 GPUs.
    PRESETS[f"{_size}-lora"] = {**_SEED, "weight_decay": _wd, "global_batch_size": 16, "max_seq_length": 4096,
                                "gpus": 2, "nproc_per_node": 2, "freeze_backbone": True, "freeze_mlp": True,
                                "freeze_llm": True, "use_llm_lora": 16, "lora_alpha": 32, "lora_dropout": 0.05, "merge_lora": True,
                                "drop_path_rate": 0.0}


def preset_names() -> list[str]:
    return list(PRESETS)


def resolve(preset: str, overrides: dict[str, Any] | None = None, tiling: Tiling | None = None) -> Hyperparameters:
    """The model's tiling (``tiling``: its card's; None leaves what the preset does not set empty),
    then the preset's values, then the user's overrides, validated together."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return Hyperparameters(**fill_tiling({**PRESETS[preset], **(overrides or {})}, tiling))


def problems(preset: str, overrides: dict[str, Any] | None = None,
             tiling: Tiling | None = None) -> list[dict[str, str]]:
    """Every problem of a preset with overrides (over ``tiling``, as :func:`resolve`), at once
    (empty: it resolves)."""
    if preset not in PRESETS:
        return [{"field": "preset", "message": f"unknown preset {preset!r}; known: {', '.join(PRESETS)}"}]
    return spec_problems(fill_tiling({**PRESETS[preset], **(overrides or {})}, tiling))


def check_tiling(card: ModelCard | None, preset: str | None = None, max_dynamic_patch: int | None = None,
                 model: str | None = None) -> tuple[Tiling, str]:
    """The tiling a dataset is checked with, as a run of ``preset`` on this model trains with it:
    the model card's (vlstudio's default with no model), then the preset's tiling, then an explicit
    ``max_dynamic_patch``; with the source of the tile budget in words (a meta file entry's own
    ``max_dynamic_patch`` goes over all of them, in the validator, as in training)."""
    if preset is not None and preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return layered_tiling(card, (f"from preset {preset!r}", PRESETS[preset] if preset else None),
                          ("as given", {"max_dynamic_patch": max_dynamic_patch}), model=model)
