"""The model side of the recipe on transformers' native ``InternVLForConditionalGeneration``:
loading with the right precision and attention kernel, the reference's freezing switches,
stochastic depth in the ViT, a different tile size, and the trainable-parameter report."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from transformers import InternVLForConditionalGeneration
from transformers.models.internvl.modeling_internvl import InternVLVisionLayer

from backend.core.spec import Hyperparameters
from worker.training import attention


def attention_kernel(h: Hyperparameters, use_gpu: bool) -> str:
    """The language model's attention kernel (:func:`worker.training.attention.choose`)."""
    return attention.choose(h.attn_implementation, use_gpu)


def load_model(path: str, h: Hyperparameters, dtype: torch.dtype, use_gpu: bool) -> InternVLForConditionalGeneration:
    # the LLM's kernel, and the vision tower's (one tile, no mask: SDPA or flash-attention 2)
    kernels = attention.per_part(attention_kernel(h, use_gpu))
    model = InternVLForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation=kernels)
    if h.vision_select_layer != -1:
        depth = model.config.vision_config.num_hidden_layers
        if not -depth <= h.vision_select_layer <= depth:
            raise SystemExit(f"vision_select_layer {h.vision_select_layer} is outside the ViT's {depth} layers")
        model.config.vision_feature_layer = h.vision_select_layer
    if h.force_image_size and h.force_image_size != image_size_of(model):
        resize_tiles(model, h.force_image_size)
    if h.drop_path_rate > 0:
        add_drop_path(model, h.drop_path_rate)
    # A KV cache is memory spent for nothing in training; save_final turns it back on so
    # generate() on the saved model is fast.
    model.config.text_config.use_cache = False
    return model


def image_size_of(model) -> int:
    size = model.config.vision_config.image_size
    return int(size[0] if isinstance(size, list | tuple) else size)


def resize_tiles(model, size: int) -> None:
    """Train on ``size`` px tiles: interpolate the ViT position embeddings once (bicubic, as
    the reference does with ``force_image_size``) and record the size in the config, so the
    saved model and its image-token count agree."""
    emb = model.model.vision_tower.embeddings
    patch = emb.patch_size[0]
    grid = size // patch
    probe = torch.zeros(1, grid * grid + 1, emb.position_embeddings.shape[-1])
    with torch.no_grad():
        new = emb.interpolate_pos_encoding(probe, size, size).detach().clone()
    emb.position_embeddings = nn.Parameter(new.to(emb.position_embeddings.dtype))
    emb.image_size = (size, size)
    pe = emb.patch_embeddings
    pe.image_size, pe.num_patches, pe.patch_shape = (size, size), grid * grid, (grid, grid)
    model.config.vision_config.image_size = [size, size]
    model.config.image_seq_length = int(grid * grid * model.config.downsample_ratio**2)


class DropPathVisionLayer(InternVLVisionLayer):
    """The native ViT layer with the reference's stochastic depth on both residual branches.

    Installed by swapping the class of existing layers, so weights and names are untouched.
    """

    drop_prob: float = 0.0

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attention_output, _ = self.attention(self.layernorm_before(hidden_states))
        hidden_states = hidden_states + self._drop(self.lambda_1 * attention_output)
        layer_output = self.dropout(self.mlp(self.layernorm_after(hidden_states)))
        if self.lambda_2 is not None:
            layer_output = self.lambda_2 * layer_output
        return hidden_states + self._drop(layer_output)


def add_drop_path(model, rate: float) -> None:
    """Rates rising linearly from 0 at the first layer to ``rate`` at the last (the reference's dpr)."""
    layers = model.model.vision_tower.encoder.layer
    rates = torch.linspace(0, rate, len(layers)).tolist()
    for layer, p in zip(layers, rates, strict=True):
        layer.__class__ = DropPathVisionLayer
        layer.drop_prob = p


def apply_freezing(model, h: Hyperparameters) -> None:
    """The reference's switches, in its order: freeze, then unfreeze the exceptions."""
    core = model.model
    if h.freeze_backbone:
        core.vision_tower.requires_grad_(False)
        if h.unfreeze_vit_layers:
            # The reference's slice start: layers[unfreeze_vit_layers:] (-2: the last two; 20: from layer 20 on).
            layers = core.vision_tower.encoder.layer
            if not -len(layers) <= h.unfreeze_vit_layers < len(layers):
                raise SystemExit(f"unfreeze_vit_layers {h.unfreeze_vit_layers} is outside the ViT's {len(layers)} layers")
            for layer in layers[h.unfreeze_vit_layers:]:
                layer.requires_grad_(True)
    if h.freeze_mlp:
        core.multi_modal_projector.requires_grad_(False)
    if h.freeze_llm:
        core.language_model.requires_grad_(False)
        model.lm_head.requires_grad_(False)
        if h.unfreeze_lm_head:
            model.lm_head.requires_grad_(True)


def module_of(name: str) -> str:
    for key, label in (("vision_tower", "vision"), ("multi_modal_projector", "mlp"), ("language_model", "llm"),
                       ("lm_head", "lm_head")):
        if key in name:
            return label + (" (LoRA)" if "lora_" in name else "")
    return "other"


def trainable_report(model) -> tuple[dict[str, int], dict[str, int]]:
    """(trainable, total) parameter counts by module: vision, mlp, llm, lm_head, LoRA apart."""
    trainable: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for name, p in model.named_parameters():
        n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        total[module_of(name)] += n
        if p.requires_grad:
            trainable[module_of(name)] += n
    return dict(trainable), dict(total)
