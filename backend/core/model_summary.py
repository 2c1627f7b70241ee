"""What a checkpoint folder is, before any conversion: its model card
(:mod:`backend.core.model_card`) as ``vlstudio models info PATH`` prints it and the Models page
shows it (``POST /api/models/inspect``). Pure Python; nothing in the folder runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.core.model_card import read_card
from backend.core.model_folder import ModelFolderError

FORMAT_NAMES = {"original": "InternVL remote-code layout", "native": "transformers-native, written by vlstudio",
                "hf": "transformers-native"}


def summarize(folder: Path) -> dict[str, Any]:
    """The facts about ``folder``; :class:`ModelFolderError` says what is missing or wrong."""
    folder = Path(folder)
    card = read_card(folder)
    if card.format is None:
        raise ModelFolderError(f"{folder / 'config.json'}: model_type is {card.config.get('model_type')!r}; expected "
                               "'internvl_chat' (an original InternVL checkpoint) or 'internvl' (a transformers-native "
                               "-hf one)")
    if card.shapes is None:  # say which size is missing
        from backend.core.model_shapes import ShapeError, shapes_from_config

        try:
            shapes_from_config(card.config)
        except ShapeError as e:
            raise ModelFolderError(str(e)) from None
        raise ModelFolderError(f"{folder / 'config.json'}: the model's sizes cannot be read")
    shapes, family = card.shapes, card.family_entry
    return {
        "path": card.path, "format": card.format, "family": card.family, "architecture": card.architecture,
        "runs_as": family.native_type if family else (card.config.get("text_config") or {}).get("model_type"),
        "released_as": family.examples if family else "", "template": card.template,
        "parameters": {"vision": shapes.vision_params, "projector": shapes.projector_params,
                       "language_model": shapes.text_params, "total": shapes.total_params},
        "shapes": shapes.to_dict(),
        "tiling": {"image_size": card.image_size, "tokens_per_tile": card.tokens_per_tile, **card.tiling.to_dict()},
    }


def describe(s: dict[str, Any]) -> list[str]:
    """``summarize``'s result as the lines ``models info`` prints."""
    p, t, sh = s["parameters"], s["tiling"], s["shapes"]
    fam = s["family"] or "unknown (no registry entry)"
    return [
        f"{s['path']}",
        f"  format      {s['format']} ({FORMAT_NAMES.get(s['format'], s['format'])})",
        f"  family      {fam}: {s['architecture']}, runs as {s['runs_as']}"
        + (f" ({s['released_as']})" if s["released_as"] else ""),
        f"  template    {s['template'] or 'unknown: name one'}",
        f"  parameters  {p['total']:,} = vision {p['vision']:,} + projector {p['projector']:,} + "
        f"language model {p['language_model']:,}",
        f"  shapes      ViT {sh['vision_layers']} x {sh['vision_hidden']}; LLM {sh['text_layers']} x "
        f"{sh['text_hidden']}, {sh['heads']} heads ({sh['kv_heads']} key-value, head dim {sh['head_dim']}), "
        f"vocabulary {sh['vocab']:,}{', tied embeddings' if sh['tied'] else ''}",
        f"  tiling      {t['image_size']} px tiles, {t['tokens_per_tile']} tokens per tile, "
        f"{t['min_dynamic_patch']}..{t['max_dynamic_patch']} tiles, thumbnail {'on' if t['use_thumbnail'] else 'off'}, "
        f"dynamic {'on' if t['dynamic_image_size'] else 'off'}",
    ]
