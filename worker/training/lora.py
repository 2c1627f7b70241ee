"""LoRA on the vision tower and/or the language model, with peft, as the reference does it:
rank r, alpha 2r unless set, dropout 0.05; targets are the attention and MLP projections of
each side. Modules that train fully next to the adapter (a projector that is not frozen, an
unfrozen output head or ViT layers) go into ``modules_to_save``, so the adapter folder holds
everything that changed and merging it into the base reproduces the trained model."""

from __future__ import annotations

from pathlib import Path

from backend.core.families import FAMILIES, VISION_LORA_TARGETS, family_of_config
from backend.core.spec import Hyperparameters

#: native module names of InternViT (q/k/v, projection_layer, fc1/fc2)
VISION_TARGETS = (r"model\.vision_tower\.encoder\.layer\.\d+\.\w+\.(" + "|".join(VISION_LORA_TARGETS) + ")")


def llm_targets(config: dict) -> str:
    """The LLM's LoRA targets from the model family registry (the reference's per-family lists);
    a language model of no known family gets every family's projection names."""
    family = family_of_config(config)
    names = family.lora_targets if family else sorted({t for f in FAMILIES.values() for t in f.lora_targets})
    return r"model\.language_model\.layers\.\d+\.\w+\.(" + "|".join(names) + ")"


def lora_config(h: Hyperparameters, model):
    from peft import LoraConfig

    llm = llm_targets(model.config.to_dict())
    targets = [t for t, r in ((VISION_TARGETS, h.use_backbone_lora), (llm, h.use_llm_lora)) if r]
    rank = h.use_llm_lora or h.use_backbone_lora
    alpha = h.lora_alpha or 2 * rank
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, int] = {}
    if h.use_backbone_lora and h.use_llm_lora:
        rank_pattern[r"model\.vision_tower.*"] = h.use_backbone_lora
        alpha_pattern[r"model\.vision_tower.*"] = h.lora_alpha or 2 * h.use_backbone_lora
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=h.lora_dropout, target_modules="|".join(targets),
                      rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, bias="none",
                      modules_to_save=fully_trained_modules(model) or None)


def fully_trained_modules(model) -> list[str]:
    """Modules whose own weights still train beside the adapter (freezing already applied)."""
    out = []
    core = model.model
    if any(p.requires_grad for p in core.multi_modal_projector.parameters()):
        out.append("multi_modal_projector")
    if any(p.requires_grad for p in model.lm_head.parameters()):
        out.append("lm_head")
    for i, layer in enumerate(core.vision_tower.encoder.layer):
        if any(p.requires_grad for p in layer.parameters()):
            out.append(f"vision_tower.encoder.layer.{i}")
    return out


def add_lora(model, h: Hyperparameters):
    """The model wrapped with its adapter; only LoRA and ``modules_to_save`` train."""
    from peft import get_peft_model

    # peft freezes every base weight and trains copies of the modules_to_save.
    return get_peft_model(model, lora_config(h, model))


def merge_adapter(base_path: str, adapter_dir: Path, out_dir: Path, prepare) -> None:
    """Load the base model, apply ``prepare`` (the same model changes as training, e.g. the
    tile size), merge the adapter and save a plain Hugging Face model to ``out_dir``."""
    from peft import PeftModel

    base = prepare(base_path)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir)
