"""Presets as data, named after the seed's scripts. The UI and the API read them; a test
checks that each one validates."""

from __future__ import annotations

from typing import Any

from backend.core.spec import Hyperparameters

PRESETS: dict[str, dict[str, Any]] = {
    # Small, fast CPU run for the built-in tiny demo model.
    "demo": {"max_steps": 20, "learning_rate": 2e-3, "per_device_batch_size": 2, "zero_stage": 2,
             "nproc_per_node": 2, "max_dynamic_patch": 2, "max_seq_length": 2048, "warmup_ratio": 0.0},
    # The seed's fine-tune of Mini-InternVL-Chat-2B/4B-V1-5 (nothing frozen, ZeRO-1).
    "2b-full": {"learning_rate": 4e-5, "weight_decay": 0.01, "warmup_ratio": 0.03, "global_batch_size": 1024,
                "per_device_batch_size": 4, "drop_path_rate": 0.1, "max_dynamic_patch": 12,
                "max_seq_length": 8192, "grad_checkpoint": True, "zero_stage": 1, "save_steps": 200,
                "save_total_limit": 3, "gpus": 8, "nproc_per_node": 8},
    "4b-full": {"learning_rate": 4e-5, "weight_decay": 0.05, "warmup_ratio": 0.03, "global_batch_size": 1024,
                "per_device_batch_size": 4, "drop_path_rate": 0.1, "max_dynamic_patch": 12,
                "max_seq_length": 8192, "grad_checkpoint": True, "zero_stage": 1, "save_steps": 200,
                "save_total_limit": 3, "gpus": 8, "nproc_per_node": 8},
    # "2nd fine-tune" of the released checkpoints: backbone frozen, 8 GPUs, global batch 128.
    "2b-2nd-full": {"learning_rate": 4e-5, "weight_decay": 0.01, "global_batch_size": 128,
                    "per_device_batch_size": 4, "freeze_backbone": True, "drop_path_rate": 0.1,
                    "max_dynamic_patch": 12, "max_seq_length": 4096, "grad_checkpoint": True,
                    "zero_stage": 1, "save_steps": 200, "save_total_limit": 3, "gpus": 8, "nproc_per_node": 8},
    "4b-2nd-full": {"learning_rate": 4e-5, "weight_decay": 0.05, "global_batch_size": 128,
                    "per_device_batch_size": 4, "freeze_backbone": True, "drop_path_rate": 0.1,
                    "max_dynamic_patch": 12, "max_seq_length": 4096, "grad_checkpoint": True,
                    "zero_stage": 1, "save_steps": 200, "save_total_limit": 3, "gpus": 8, "nproc_per_node": 8},
}


def preset_names() -> list[str]:
    return list(PRESETS)


def resolve(preset: str, overrides: dict[str, Any] | None = None) -> Hyperparameters:
    """Preset values, then the user's overrides, validated together."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return Hyperparameters(**{**PRESETS[preset], **(overrides or {})})
