"""The loss-reduction functions (worker/training/loss.py) on hand-made numbers: the weights
of each mode, packed rows giving the same weights as one sample per row, and the share each
micro-batch returns summing (after the ranks' mean) to the step loss for any split."""

from __future__ import annotations

import math

import pytest
import torch

from worker.training.loss import (
    micro_batch_loss,
    sample_weights,
    step_denominator,
    token_losses,
    token_weights,
)

X = -100


def test_sample_weights_of_each_mode():
    n = torch.tensor([4, 1, 0, 9])
    assert sample_weights(n, "token").tolist() == [1, 1, 0, 1]
    assert sample_weights(n, "micro_batch_mean").tolist() == [1, 1, 0, 1]
    assert sample_weights(n, "sample").tolist() == [0.25, 1, 0, pytest.approx(1 / 9)]
    assert sample_weights(n, "square").tolist() == [0.5, 1, 0, pytest.approx(1 / 3)]
    with pytest.raises(ValueError, match="unknown loss_reduction 'mean'"):
        sample_weights(n, "mean")


def test_token_weights_count_the_shifted_targets_of_each_row():
    labels = torch.tensor([[X, X, 5, 6, 7], [X, X, X, 8, X]])
    w = token_weights(labels, "sample")
    assert w.tolist() == [[0, pytest.approx(1 / 3), pytest.approx(1 / 3), pytest.approx(1 / 3)], [0, 0, 1, 0]]


def test_packed_rows_weigh_tokens_as_separate_rows_would():
    # two samples packed into one row: the same weights as each in a row of its own
    packed = torch.tensor([[X, 5, 6, X, X, 7]])
    index = torch.tensor([[0, 0, 0, 1, 1, 1]])
    apart = torch.cat([token_weights(torch.tensor([[X, 5, 6]]), "square")[0],
                       torch.tensor([0.0]), token_weights(torch.tensor([[X, X, 7]]), "square")[0]])
    assert torch.allclose(token_weights(packed, "square", index)[0], apart)


def test_token_losses_are_cross_entropy_of_the_next_token():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(2) = 3/6 at position 0
    losses = token_losses(logits, torch.tensor([[X, 2, X]]))
    assert losses.tolist() == [[pytest.approx(math.log(2.0)), 0.0]]


def split_step(losses: list[torch.Tensor], labels: list[torch.Tensor], reduction: str, world: int, micro: int):
    """The step loss as the Trainer + DeepSpeed see it: samples dealt to ``world`` ranks x
    ``micro`` micro-batches, each rank's shares summed, then averaged over ranks."""
    per = len(losses) // (world * micro)
    parts = [(torch.cat(losses[k * per:(k + 1) * per]), torch.cat(labels[k * per:(k + 1) * per]))
             for k in range(world * micro)]
    denom = step_denominator([lab for _, lab in parts], reduction, torch.device("cpu"))
    shares = [micro_batch_loss(lo, token_weights(lab, reduction), reduction=reduction, denominator=denom,
                               micro_batches=micro, world_size=world) for lo, lab in parts]
    return sum(shares) / world


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_step_loss_is_the_same_for_every_split(reduction):
    g = torch.Generator().manual_seed(0)
    labels = [torch.tensor([[X] + [1] * n + [X] * (6 - n)]) for n in (1, 5, 2, 3)]
    losses = [torch.rand(1, 6, generator=g) * (lab[:, 1:] != X) for lab in labels]
    values = [split_step(losses, labels, reduction, w, m) for w, m in ((1, 1), (2, 1), (1, 2), (4, 1), (2, 2))]
    assert all(v == pytest.approx(float(values[0]), rel=1e-6) for v in values), values
    flat_l, flat_w = torch.cat(losses), torch.cat([token_weights(lab, reduction) for lab in labels])
    assert float(values[0]) == pytest.approx(float((flat_l * flat_w).sum() / flat_w.sum()), rel=1e-6)


def test_the_reference_mean_averages_micro_batch_means():
    labels = [torch.tensor([[X, 1, X]]), torch.tensor([[X, 1, 1]])]
    losses = [torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 4.0]])]
    assert float(split_step(losses, labels, "micro_batch_mean", 2, 1)) == pytest.approx((1 + 3) / 2)
    assert float(split_step(losses, labels, "micro_batch_mean", 1, 2)) == pytest.approx((1 + 3) / 2)
    assert float(split_step(losses, labels, "micro_batch_mean", 1, 1)) == pytest.approx(7 / 3)
