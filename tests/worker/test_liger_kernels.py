"""The real Liger Triton kernels, run on the CPU by Triton's interpreter (``triton_cpu``), against
the plain PyTorch computations they replace: the fused linear cross-entropy through the
trainer's own loss code for every ``loss_reduction`` (loss and both gradients), and the
RMSNorm / RoPE / SwiGLU patches that ``apply_liger`` puts on the tiny native InternVL (forward
and backward). Shapes are tiny: the interpreter runs each kernel program in numpy."""

from __future__ import annotations

import os

import pytest
import torch
import triton_cpu

from backend.core.spec import Hyperparameters
from worker.training import loss as loss_fn
from worker.training import modeling, speed

#: the interpreter on CPU tensors; on a machine with a GPU the same tests run the compiled kernels
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


@pytest.fixture(scope="module", autouse=True)
def interpreted():
    if DEVICE == "cpu":
        triton_cpu.enable()
        triton_cpu.check_interpreted()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from worker.demo_model import build_demo_model

    return str(build_demo_model(tmp_path_factory.mktemp("liger") / "demo"))


def batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows of 24 tokens, the first targets ignored (the prompt: a zero-weight first token, whose
    zero upstream gradient scaled every gradient in liger-kernel < 0.6), the second row shorter,
    and a packed-style sample index so per-sample weights differ within a row."""
    torch.manual_seed(0)
    ids = torch.randint(10, vocab, (2, 24), device=DEVICE)
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 19:] = -100
    labels[0, 12:14] = -100  # the prompt of the row's second sample
    index = torch.tensor([[0] * 12 + [1] * 12, [2] * 24], device=DEVICE)
    return ids, labels, index


@pytest.mark.parametrize("reduction", loss_fn.REDUCTIONS)
def test_fused_linear_cross_entropy_gives_the_plain_loss_and_gradients(reduction):
    """The trainer's fused path (``fused_token_losses``: Liger, reduction="none", per-token
    upstream gradients) and its logits path (``lm_head`` + fp32 cross-entropy), reduced by the
    same ``token_weights`` / ``micro_batch_loss``: equal loss, hidden-state and head gradients."""
    hidden_size, vocab = 32, 300
    ids, labels, index = batch(vocab)
    torch.manual_seed(1)
    hidden0 = torch.randn(2, 24, hidden_size, device=DEVICE)
    head0 = torch.nn.Linear(hidden_size, vocab, bias=False, device=DEVICE)
    weights = loss_fn.token_weights(labels, reduction, index)
    assert float(weights[:, 0].abs().sum()) == 0.0  # the first target has weight 0
    denominator = None if reduction == "micro_batch_mean" else weights.sum().double()

    def step_loss(fused: bool):
        hidden = hidden0.clone().requires_grad_(True)
        head = torch.nn.Linear(hidden_size, vocab, bias=False, device=DEVICE)
        head.weight.data.copy_(head0.weight.data)
        if fused:
            losses = speed.fused_token_losses(hidden, head, labels)
        else:
            losses = loss_fn.token_losses(head(hidden), labels)
        loss = loss_fn.micro_batch_loss(losses, weights, reduction=reduction, denominator=denominator,
                                        micro_batches=1, world_size=1)
        loss.backward()
        return loss.detach(), hidden.grad, head.weight.grad

    fused, plain = step_loss(True), step_loss(False)
    assert float(fused[0]) == pytest.approx(float(plain[0]), abs=1e-5)
    assert float(plain[1].abs().max()) > 1e-4  # gradients that are not all zero
    assert torch.allclose(fused[1], plain[1], atol=1e-6, rtol=1e-4)
    assert torch.allclose(fused[2], plain[2], atol=1e-6, rtol=1e-4)


def test_fused_sum_path_gives_the_token_mean_and_its_gradients():
    """``fused_linear_cross_entropy`` (Liger, reduction="sum", over the step's target count)."""
    hidden_size, vocab = 32, 300
    ids, labels, _ = batch(vocab)
    torch.manual_seed(2)
    hidden = torch.randn(2, 24, hidden_size, device=DEVICE, requires_grad=True)
    head = torch.nn.Linear(hidden_size, vocab, bias=False, device=DEVICE)
    count = int((labels[:, 1:] != -100).sum())
    fused = speed.fused_linear_cross_entropy(hidden, head, labels, torch.tensor(float(count)))
    fused.backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = None
    head.weight.grad = None
    plain = loss_fn.token_losses(head(hidden), labels).sum() / count
    plain.backward()
    assert float(fused) == pytest.approx(float(plain), abs=1e-5)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-6, rtol=1e-4)
    assert torch.allclose(grads[1], head.weight.grad, atol=1e-6, rtol=1e-4)


def forward_backward(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    logits = model(input_ids=ids).logits
    (logits.float().square().mean() + logits.float().logsumexp(-1).mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def test_apply_liger_on_the_tiny_internvl_equals_the_unpatched_model(demo, monkeypatch):
    """``apply_liger`` (RMSNorm, RoPE, SwiGLU of the LLM) on the native InternVL: the logits and
    every language-model gradient of the unpatched model, through Liger's kernels."""
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from liger_kernel.ops.rope import LigerRopeFunction
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    from transformers.models.llama import modeling_llama

    # Liger's patch replaces module-level names of modeling_llama too: restored after the test
    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    h = Hyperparameters()
    plain = modeling.load_model(demo, h, torch.float32, use_gpu=False).to(DEVICE)
    torch.manual_seed(3)
    ids = torch.randint(10, 500, (2, 9), device=DEVICE)
    ref_logits, ref_grads = forward_backward(plain, ids)

    patched = modeling.load_model(demo, h, torch.float32, use_gpu=False).to(DEVICE)
    assert speed.apply_liger(patched) == "Liger rope, rms_norm, swiglu on the llama LLM"
    calls = {"rms": 0, "rope": 0, "swiglu": 0}
    for key, fn in (("rms", LigerRMSNormFunction), ("rope", LigerRopeFunction), ("swiglu", LigerSiLUMulFunction)):
        original = fn.apply.__func__

        def counting(cls, *args, _key=key, _orig=original, **kwargs):
            calls[_key] += 1
            return _orig(cls, *args, **kwargs)

        monkeypatch.setattr(fn, "apply", classmethod(counting))
    logits, grads = forward_backward(patched, ids)
    layers = patched.config.text_config.num_hidden_layers
    assert calls == {"rms": 2 * layers + 1, "rope": layers, "swiglu": layers}  # every one ran Liger's kernel
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-4)
    llm = [n for n in ref_grads if "language_model" in n or "lm_head" in n]
    assert len(llm) == len([n for n, _ in plain.named_parameters() if "language_model" in n or "lm_head" in n])
    for n in ref_grads:
        assert torch.allclose(grads[n], ref_grads[n], atol=1e-6, rtol=1e-4), n
