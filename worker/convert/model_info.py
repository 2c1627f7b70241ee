"""What the studio registers about an imported model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    """The facts about a converted (or validated) native model that the database row keeps.

    ``family`` names the language model the checkpoint was released with (an entry of
    :mod:`backend.core.families`); ``text_model_type`` is the transformers class family it runs as
    natively (InternLM2 runs as ``llama``). ``shapes`` are the model's real sizes and parameter
    counts by part (:func:`backend.core.model_shapes.shapes_from_config`), which the memory
    estimate computes with.
    """

    family: str
    text_model_type: str
    template: str
    vision_hidden_size: int
    vision_layers: int
    text_hidden_size: int
    text_layers: int
    vocab_size: int
    image_token_id: int
    image_size: int
    num_image_token: int
    max_dynamic_patch: int
    min_dynamic_patch: int
    use_thumbnail: bool
    dynamic_image_size: bool
    param_count: int
    dtype: str
    source_format: str  # "original" | "hf"
    source_path: str  # the imported folder, kept so that export can copy its remote-code files
    native_path: str  # the folder written by the import (transformers-native layout)
    shapes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
