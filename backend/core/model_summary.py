"""What a checkpoint folder is, before any conversion: its format, family, conversation template,
parameter counts by part and tiling settings, read from its data files only (``config.json``,
the tokenizer's and image processor's configs). ``vlstudio models info PATH`` prints it and the
Models page shows it (``POST /api/models/inspect``). Pure Python; nothing in the folder runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backend.core.families import family_of_config
from backend.core.model_folder import ModelFolderError, read_config
from backend.core.model_shapes import ShapeError, shapes_from_config, tile_geometry
from backend.core.templates import TOKENIZER_TEMPLATE

#: the defaults of InternVL's ``InternVLChatConfig`` (what the original code runs with)
ORIGINAL_TILING = {"max_dynamic_patch": 6, "min_dynamic_patch": 1, "use_thumbnail": False,
                   "dynamic_image_size": False}


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None
    return value if isinstance(value, dict) else {}


def has_chat_template(folder: Path) -> bool:
    """Whether the folder's tokenizer brings a chat template of its own (the -hf checkpoints)."""
    if (folder / "chat_template.jinja").is_file():
        return True
    return any(isinstance(_json(folder / n).get("chat_template"), str)
               for n in ("tokenizer_config.json", "chat_template.json", "processor_config.json"))


def tiling_of(folder: Path, config: dict, fmt: str) -> dict[str, Any]:
    """max/min_dynamic_patch, use_thumbnail, dynamic_image_size: the config's, else (native) the
    image processor's, else the original config class's defaults."""
    if fmt == "original":
        return {k: type(v)(config.get(k, v)) for k, v in ORIGINAL_TILING.items()}
    pre = _json(folder / "preprocessor_config.json")
    return {"max_dynamic_patch": int(config.get("max_dynamic_patch", pre.get("max_patches", 12))),
            "min_dynamic_patch": int(config.get("min_dynamic_patch", pre.get("min_patches", 1))),
            "use_thumbnail": bool(config.get("use_thumbnail", True)),
            "dynamic_image_size": bool(config.get("dynamic_image_size", pre.get("crop_to_patches", True)))}


def summarize(folder: Path) -> dict[str, Any]:
    """The facts about ``folder``; :class:`ModelFolderError` says what is missing or wrong."""
    folder = Path(folder)
    config = read_config(folder)
    model_type = config.get("model_type")
    fmt = {"internvl_chat": "original", "internvl": "hf"}.get(model_type)
    if fmt is None:
        raise ModelFolderError(f"{folder / 'config.json'}: model_type is {model_type!r}; expected 'internvl_chat' "
                               "(an original InternVL checkpoint) or 'internvl' (a transformers-native -hf one)")
    family = family_of_config(config)
    template = config.get("template")
    if not template:
        template = (TOKENIZER_TEMPLATE if fmt == "hf" and has_chat_template(folder)
                    else family.default_template if family else None)
    try:
        shapes = shapes_from_config(config)
    except ShapeError as e:
        raise ModelFolderError(str(e)) from None
    size, tokens = tile_geometry(config)
    llm = config.get("llm_config" if fmt == "original" else "text_config") or {}
    return {
        "path": str(folder.resolve()), "format": fmt, "family": family.name if family else None,
        "architecture": (llm.get("architectures") or [llm.get("model_type")])[0],
        "runs_as": family.native_type if family else llm.get("model_type"),
        "released_as": family.examples if family else "", "template": template,
        "parameters": {"vision": shapes.vision_params, "projector": shapes.projector_params,
                       "language_model": shapes.text_params, "total": shapes.total_params},
        "shapes": shapes.to_dict(),
        "tiling": {"image_size": size, "tokens_per_tile": tokens, **tiling_of(folder, config, fmt)},
    }


def describe(s: dict[str, Any]) -> list[str]:
    """``summarize``'s result as the lines ``models info`` prints."""
    p, t, sh = s["parameters"], s["tiling"], s["shapes"]
    fam = s["family"] or "unknown (no registry entry)"
    return [
        f"{s['path']}",
        f"  format      {s['format']} ({'InternVL remote-code layout' if s['format'] == 'original' else 'transformers-native'})",
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
