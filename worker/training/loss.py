"""Loss reduction: how the per-token losses of one optimizer step become its loss.

The training program owns this (torchtune style) instead of leaving it to the model's
``labels=`` path and the Trainer's scaling, so that the numbers do not depend on how the
global batch is split over processes (W) and gradient-accumulation micro-batches (M).

Every trained token t (a label that is not -100, after the causal shift) gets a weight
``w_t`` from the number ``n`` of trained tokens of *its sample* (:func:`sample_weights`):

- ``token``: ``w = 1``            -> the step loss is the mean over all its trained tokens;
- ``sample``: ``w = 1 / n``       -> every sample counts the same, whatever its length;
- ``square``: ``w = 1 / sqrt(n)`` -> in between (InternVL 2.5's packed-training options);
- ``micro_batch_mean``: ``w = 1`` -> the reference's V1.5 recipe: the token mean of each
  micro-batch, averaged over micro-batches and ranks. Not split-invariant by design (a
  micro-batch with few trained tokens weighs as much as one with many); the seed presets use
  it so the studio trains what the seed's scripts train.

The step loss is ``sum_t w_t * loss_t / D`` with ``D`` the sum of the weights of the whole
step over every rank and micro-batch (``micro_batch_mean``: the micro-batch's own sum x M x W).
Each micro-batch returns its share multiplied by W, because DeepSpeed and DDP *average* the
gradients over ranks; the Trainer's logged loss is likewise the rank mean of the sum over
micro-batches. Both then equal the step loss exactly.

Weights are a function of per-sample counts only, so packed batches (several samples per
row) use the same functions with a per-token sample index (``sample_index``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE_INDEX = -100
LossReduction = Literal["micro_batch_mean", "token", "sample", "square"]
REDUCTIONS: tuple[str, ...] = ("micro_batch_mean", "token", "sample", "square")


def sample_weights(counts: torch.Tensor, reduction: str) -> torch.Tensor:
    """The per-token weight of a sample with ``counts`` trained tokens (0 for an empty sample)."""
    counts = counts.to(torch.float32)
    if reduction in ("token", "micro_batch_mean"):
        w = torch.ones_like(counts)
    elif reduction == "sample":
        w = 1.0 / counts.clamp(min=1)
    elif reduction == "square":
        w = counts.clamp(min=1).rsqrt()
    else:
        raise ValueError(f"unknown loss_reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")
    return torch.where(counts > 0, w, torch.zeros_like(w))


def shifted(labels: torch.Tensor) -> torch.Tensor:
    """The target of each position: the next token's label (the last position has none)."""
    return labels[..., 1:]


def token_weights(labels: torch.Tensor, reduction: str, sample_index: torch.Tensor | None = None) -> torch.Tensor:
    """Weights of the shifted targets ``labels[:, 1:]``, shape ``[B, T-1]``, 0 where ignored.

    ``sample_index`` ([B, T], packed rows): which sample each token belongs to (ids unique
    within the batch, -1 on padding); without it each row is one sample.
    """
    target = shifted(labels)
    trained = target != IGNORE_INDEX
    if sample_index is None:
        counts = trained.sum(dim=-1, keepdim=True)
        return sample_weights(counts, reduction).expand_as(target) * trained
    idx = shifted(sample_index).reshape(-1).to(target.device).clamp(min=0)  # -1 (padding) has no target
    counts = torch.bincount(idx[trained.reshape(-1)], minlength=int(idx.max()) + 1 if idx.numel() else 0)
    return sample_weights(counts, reduction)[idx].reshape(target.shape) * trained


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every shifted target in fp32, ``[B, T-1]``, 0 where ignored."""
    target = shifted(labels)
    flat = logits[..., :-1, :].reshape(-1, logits.shape[-1]).float()
    out = F.cross_entropy(flat, target.reshape(-1).to(flat.device), ignore_index=IGNORE_INDEX, reduction="none")
    return out.reshape(target.shape)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


def step_denominator(labels: Sequence[torch.Tensor], reduction: str, device: torch.device,
                     sample_index: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
    """``D`` of a whole step: the weights of every micro-batch of this rank, summed over ranks
    (a collective: every rank calls it once per step). Unused by ``micro_batch_mean``."""
    local = torch.zeros((), dtype=torch.float64, device=device)
    for i, lab in enumerate(labels):
        si = sample_index[i] if sample_index is not None else None
        local += token_weights(lab, reduction, si).sum().to(device, torch.float64)
    return all_reduce_sum(local)


def micro_batch_loss(losses: torch.Tensor, weights: torch.Tensor, *, reduction: str, denominator: torch.Tensor | None,
                     micro_batches: int, world_size: int) -> torch.Tensor:
    """What one micro-batch returns for ``backward``: its share of the step loss, times W
    (the ranks' gradients and logged losses are averaged, see the module docstring)."""
    total = (losses * weights).sum()
    if reduction == "micro_batch_mean":
        # A micro-batch without trained tokens contributes 0, as the reference's mean of nothing
        # would be NaN; the reference drops such samples before, so this only guards padding.
        return total / weights.sum().clamp(min=1) / micro_batches
    if denominator is None:
        raise ValueError(f"loss_reduction {reduction!r} needs the step's weight sum")
    return total * world_size / denominator.clamp(min=1e-12).to(total.dtype)
