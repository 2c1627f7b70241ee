"""torch's varlen kernel and FlexAttention against SDPA on packs, in bf16 on the GPU: the kernel
alone (forward and gradients, GQA heads, 2B-like head sizes), then the tiny InternVL through the
trainer's packed path, each sample of a pack against the same sample run alone with SDPA (loss
and gradients). In the CPU dry run only flex_attention's forward runs (fp32)."""

from __future__ import annotations

import pytest
import torch
from conftest import CUDA, DEVICE, gpu_only

from backend.core.samples import IGNORE_INDEX
from worker.training import attention
from worker.training.packing import PackCollator, pack_samples

DTYPE = torch.bfloat16 if CUDA else torch.float32


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def test_varlen_kernel_equals_sdpa_per_segment_forward_and_backward():
    gpu_only("torch's varlen kernel (aten::_flash_attention_forward)")
    lengths = [1000, 3000, 517, 2675]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q0 = torch.randn(sum(lengths), 16, 128, device=DEVICE, dtype=DTYPE, generator=g)
    k0 = torch.randn(sum(lengths), 8, 128, device=DEVICE, dtype=DTYPE, generator=g)
    v0 = torch.randn(sum(lengths), 8, 128, device=DEVICE, dtype=DTYPE, generator=g)
    grad = torch.randn_like(q0)

    def run(kernel):
        q, k, v = (x.clone().requires_grad_(True) for x in (q0, k0, v0))
        out = kernel(q, k, v)
        out.backward(grad)
        return out, q.grad, k.grad, v.grad

    def sdpa(q, k, v):
        return torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True,
            enable_gqa=True).transpose(0, 1) for a, b in zip(cu.tolist(), cu[1:].tolist(), strict=False)])

    got = run(lambda q, k, v: attention.varlen_kernel(q, k, v, cu, cu, max(lengths), max(lengths), None))
    want = run(sdpa)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert cosine(a, b) > 0.9995, name
        assert float((a.float() - b.float()).abs().max()) < 0.05 * float(b.float().abs().max()), name


@pytest.fixture(scope="module")
def packing(tmp_path_factory):
    from test_packing import packing_setup

    ds, model, collator, pad = packing_setup(tmp_path_factory.mktemp("gpu_packing"), dtype=DTYPE)
    return ds, model.to(DEVICE), collator, pad


def packed_loss(model, ds, collator, packs, one_row: bool, grad: bool):
    """The trainer's compute_loss on a packed batch: (step loss, per-sample losses)."""
    from test_packing import fake_trainer, token_losses

    from worker.training.packing import per_sample_token_counts
    from worker.training.train import InternVLTrainer

    batch = PackCollator(collator.pad, collator)([pack_samples([ds[i] for i in p]) for p in packs])
    owner = batch["sample_index"][:, 1:].to(DEVICE)
    labels = batch["labels"].to(DEVICE)
    inputs = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(DTYPE)
    num_items = torch.tensor(float((labels[:, 1:] != IGNORE_INDEX).sum()), device=DEVICE)
    with torch.set_grad_enabled(grad):
        loss, out = InternVLTrainer.compute_loss(fake_trainer(one_row), model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items)
    per_tok = token_losses(out.logits.reshape(len(packs), -1, out.logits.shape[-1]).float(), labels)
    sums = torch.zeros(int(owner.max()) + 1, device=DEVICE).index_add_(0, owner[owner >= 0], per_tok[owner >= 0])
    counts = per_sample_token_counts(labels[:, 1:], owner)
    flat = [i for p in packs for i in p]
    return loss, {i: float(sums[k] / counts[k]) for k, i in enumerate(flat)}


def with_kernel(model, tmp_path, kernel):
    from transformers import InternVLForConditionalGeneration

    model.save_pretrained(tmp_path / "m")
    return InternVLForConditionalGeneration.from_pretrained(
        tmp_path / "m", dtype=DTYPE, attn_implementation=attention.per_part(kernel)).to(DEVICE)


@pytest.mark.parametrize("kernel", ["varlen", "flex_attention"])
def test_packs_equal_each_sample_alone_in_bf16_loss_and_gradients(packing, tmp_path, kernel):
    ds, model, collator, _ = packing
    if kernel == "varlen":
        gpu_only("torch's varlen kernel")
    packs = [(0, 2, 1), (5, 4), (3,)]
    fast = with_kernel(model, tmp_path, kernel)
    alone = {i: packed_loss(model, ds, collator, [(i,)], one_row=False, grad=False)[1][i] for i in range(6)}
    grad = CUDA  # flex_attention's backward runs on CUDA only
    loss, per = packed_loss(fast, ds, collator, packs, one_row=kernel == "varlen", grad=grad)
    tol = 3e-2 if CUDA else 1e-5
    for i, v in alone.items():
        assert per[i] == pytest.approx(v, abs=tol), (kernel, i)
    if not grad:
        return
    # gradients: the same packed step with SDPA's dense block-diagonal mask
    fast.zero_grad()
    loss.backward()
    ref_loss, _ = packed_loss(model, ds, collator, packs, one_row=False, grad=True)
    model.zero_grad()
    ref_loss.backward()
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-2)
    ref = dict(model.named_parameters())
    for name, p in fast.named_parameters():
        if p.grad is not None and "language_model" in name and p.grad.abs().max() > 0:
            assert cosine(p.grad, ref[name].grad) > 0.99, (kernel, name)
