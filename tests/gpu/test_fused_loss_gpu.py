"""Liger's fused linear cross-entropy, compiled on the GPU, at the 2B model's head (hidden 2048,
vocab 92,553) over 4,096 tokens in bf16: the trainer's fused path against its logits path for
every loss_reduction, loss and both gradients (the first target ignored, as a prompt token
always is). In the CPU dry run: tiny shapes through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
from conftest import CUDA, DEVICE

from worker.training import loss as loss_fn
from worker.training import speed

HIDDEN, VOCAB, TOKENS, DTYPE = (2048, 92553, 4096, torch.bfloat16) if CUDA else (32, 300, 48, torch.float32)


@pytest.fixture(scope="module", autouse=True)
def interpreted():
    if not CUDA:
        import triton_cpu

        triton_cpu.enable()
        triton_cpu.check_interpreted()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


@pytest.mark.parametrize("reduction", loss_fn.REDUCTIONS)
def test_fused_loss_backward_equals_the_plain_loss_in_bf16(reduction):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    labels = torch.randint(0, VOCAB, (2, TOKENS // 2), device=DEVICE, generator=g)
    labels[:, :16] = -100  # prompt
    labels[1, TOKENS // 3:] = -100
    index = torch.zeros_like(labels)
    index[0, TOKENS // 4:] = 1  # two samples in the first row
    index[1] = 2
    hidden0 = torch.randn(2, TOKENS // 2, HIDDEN, device=DEVICE, dtype=DTYPE, generator=g)
    weight0 = (torch.randn(VOCAB, HIDDEN, device=DEVICE, generator=g) * HIDDEN**-0.5).to(DTYPE)
    weights = loss_fn.token_weights(labels, reduction, index)
    assert float(weights[:, 0].abs().sum()) == 0.0
    denominator = None if reduction == "micro_batch_mean" else weights.sum().double()

    def run(fused: bool):
        hidden = hidden0.clone().requires_grad_(True)
        head = torch.nn.Linear(HIDDEN, VOCAB, bias=False, device=DEVICE, dtype=DTYPE)
        head.weight.data.copy_(weight0)
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        losses = (speed.fused_token_losses(hidden, head, labels) if fused
                  else loss_fn.token_losses(head(hidden), labels))
        loss = loss_fn.micro_batch_loss(losses, weights, reduction=reduction, denominator=denominator,
                                        micro_batches=1, world_size=1)
        loss.backward()
        peak = torch.cuda.max_memory_allocated() / 2**30 if CUDA else 0.0
        return float(loss), hidden.grad, head.weight.grad, peak

    fused, plain = run(True), run(False)
    print(f"{reduction}: loss fused {fused[0]:.6f} plain {plain[0]:.6f}; peak GiB fused {fused[3]:.2f} "
          f"plain {plain[3]:.2f}")
    tol = 2e-3 if CUDA else 1e-5  # bf16 logits on the plain path
    assert fused[0] == pytest.approx(plain[0], rel=tol)
    assert float(plain[1].float().abs().max()) > 0
    for got, want in ((fused[1], plain[1]), (fused[2], plain[2])):
        assert cosine(got, want) > 0.999
        assert float((got.float() - want.float()).norm() / want.float().norm()) < (2e-2 if CUDA else 1e-5)
