"""An estimate of GPU memory per device for a training job, shown at submission and used to
refuse jobs that cannot fit. The formula is written out in docs/jobs.md. Its sizes are the
model's real shapes; its activation constants are measured (bench/activation_bytes.py) on CPU;
it has not been checked against peaks on a real GPU (none was at hand), so only its exact part
(weights, gradients, optimizer states) refuses a job and the rest warns.

All sizes in bytes unless the name says GiB. bf16 weights (2 bytes), AdamW with fp32 master
weights and two fp32 moments (12 bytes per trainable parameter), DeepSpeed ZeRO sharding over
the job's data-parallel GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.core.model_card import read_card

GIB = 2**30
# Bytes autograd keeps per token, per hidden unit, per layer in bf16 with SDPA (no s^2 term), as
# measured by bench/activation_bytes.py on the native modules at InternViT-300M's and
# InternLM2-1.8B's shape ratios: the ViT layer (GELU MLP) is near Korthikanti et al.'s 34; the
# LLM layer's SwiGLU MLP keeps more (gate, up, their product).
VIT_ACT_BYTES = 36
LLM_ACT_BYTES = 54
OVERHEAD_BYTES = int(1.5 * GIB)  # CUDA context, NCCL buffers, allocator slack
FRAGMENTATION = 1.10


@dataclass(frozen=True)
class Arch:
    """Parameter counts and shapes of one model, from its real shapes (never from its name)."""

    vit_params: float
    vit_hidden: int
    vit_layers: int
    mlp_params: float
    llm_params: float
    llm_hidden: int
    llm_layers: int
    vocab: int
    vit_tokens_per_tile: int = 1025  # 32x32 patches + CLS at 448px
    llm_tokens_per_tile: int = 256

    @classmethod
    def from_shapes(cls, s: dict[str, Any]) -> Arch:
        return cls(vit_params=s["vision_params"], vit_hidden=s["vision_hidden"], vit_layers=s["vision_layers"],
                   mlp_params=s["projector_params"], llm_params=s["text_params"], llm_hidden=s["text_hidden"],
                   llm_layers=s["text_layers"], vocab=s["vocab"], vit_tokens_per_tile=s["vision_tokens_per_tile"],
                   llm_tokens_per_tile=s["image_tokens_per_tile"])


TEXT_TOKENS = 512  # a typical question + answer; the sequence is capped at max_seq_length


def arch_for(info: dict[str, Any], path: str | None = None) -> Arch | None:
    """The architecture of a registered model: the shapes its import recorded (``info["shapes"]``),
    else those of its folder's model card, else an explicit ``info["arch"]``; None when
    none is known. The model's name plays no part: a renamed model keeps its estimate."""
    if isinstance(info.get("shapes"), dict) and info["shapes"]:
        return Arch.from_shapes(info["shapes"])
    if path and (Path(path) / "config.json").is_file():
        try:
            card = read_card(Path(path))
        except (ValueError, OSError):  # bad JSON: no estimate rather than a wrong one
            card = None
        if card is not None and card.shapes is not None:  # None: a size is missing from config.json
            return Arch.from_shapes(card.shapes.to_dict())
    if isinstance(info.get("arch"), dict):
        return Arch(**info["arch"])
    return None


def _lora_params(params: float, hidden: int, rank: int) -> float:
    # A rank-r adapter on a d x d linear adds r(d + d) parameters: a 2r/d fraction of it.
    return params * 2 * rank / hidden


def estimate(arch: Arch, h: Any) -> dict[str, Any]:
    """Per-device bytes for hyperparameters ``h`` (a ``Hyperparameters``). Returns the parts and
    the total in GiB, so the UI can show where the memory goes."""
    n = max(1, int(getattr(h, "gpus", 0)) * int(getattr(h, "nnodes", 1)))
    zero = int(getattr(h, "zero_stage", 0))
    frozen_vit = bool(getattr(h, "freeze_backbone", False))
    frozen_llm = bool(getattr(h, "freeze_llm", False))
    vit_lora, llm_lora = int(getattr(h, "use_backbone_lora", 0)), int(getattr(h, "use_llm_lora", 0))
    total = arch.vit_params + arch.mlp_params + arch.llm_params
    trainable = (0 if frozen_vit else arch.vit_params) + (0 if getattr(h, "freeze_mlp", False) else arch.mlp_params)
    trainable += 0 if frozen_llm else arch.llm_params
    if vit_lora:
        trainable += _lora_params(arch.vit_params, arch.vit_hidden, vit_lora)
    if llm_lora:
        trainable += _lora_params(arch.llm_params, arch.llm_hidden, llm_lora)
    weights = total * 2 / (n if zero == 3 else 1)
    grads = trainable * 2 / (n if zero >= 2 else 1)
    optimizer = trainable * 12 / (n if zero >= 1 else 1)

    tiles = h.tiling.tiles_per_image  # the job's tiling (resolved against the model's card at submission)
    seq = min(int(getattr(h, "max_seq_length", 4096)), TEXT_TOKENS + arch.llm_tokens_per_tile * tiles)
    vit_seq = arch.vit_tokens_per_tile * tiles
    batch = int(getattr(h, "per_device_batch_size", 1))
    ckpt = bool(getattr(h, "grad_checkpoint", False))

    def acts(tokens: int, hidden: int, layers: int, trains: bool, per: int) -> float:
        if not trains:  # no backward through it: one layer's activations at a time
            return per * tokens * hidden
        if ckpt:  # layer inputs kept, one layer recomputed at a time
            return 2 * tokens * hidden * layers + per * tokens * hidden
        return per * tokens * hidden * layers

    # Gradients flow through the LLM whenever anything before or in it trains.
    activations = batch * (acts(vit_seq, arch.vit_hidden, arch.vit_layers, not frozen_vit or bool(vit_lora),
                                VIT_ACT_BYTES)
                           + acts(seq, arch.llm_hidden, arch.llm_layers, True, LLM_ACT_BYTES))
    logits = batch * seq * arch.vocab * (2 + 4)  # bf16 logits and their fp32 copy for the loss
    parts = {"weights": weights, "gradients": grads, "optimizer": optimizer, "activations": activations,
             "logits": logits, "overhead": OVERHEAD_BYTES}
    total_bytes = sum(parts.values()) * FRAGMENTATION
    # weights, gradients and optimizer states follow from the shapes exactly; activations and
    # overhead are a model of the kernels (docs/jobs.md), so only the exact part may refuse a job
    exact_bytes = weights + grads + optimizer
    return {"per_device_gib": round(total_bytes / GIB, 1), "exact_gib": round(exact_bytes / GIB, 1), "devices": n,
            "parts_gib": {k: round(v / GIB, 2) for k, v in parts.items()},
            "assumptions": {"sequence_tokens": seq, "tiles": tiles, "trainable_params": int(trainable),
                            "total_params": int(total), "zero_stage": zero, "grad_checkpoint": ckpt}}


def suggestions(h: Any) -> list[str]:
    out = []
    if not getattr(h, "use_llm_lora", 0):
        out.append("train a LoRA adapter instead of the full LLM (use_llm_lora: 16, freeze_llm: true)")
    if int(getattr(h, "zero_stage", 0)) < 3:
        out.append("shard weights, gradients and optimizer state with ZeRO-3 (zero_stage: 3)")
    if int(getattr(h, "per_device_batch_size", 1)) > 1:
        out.append("lower per_device_batch_size and raise global_batch_size (gradient accumulation)")
    if not getattr(h, "grad_checkpoint", False):
        out.append("turn on grad_checkpoint")
    if h.tiling.max_dynamic_patch > 6:
        out.append("fewer tiles per image (max_dynamic_patch: 6)")
    return out
