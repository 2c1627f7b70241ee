"""The speed options of a run and the figure MFU is measured against.

- gradient checkpointing per part (vision tower, language model), instead of the Trainer's one
  switch for the whole model: the ViT's activations per tile are small next to the LLM's per
  token, so checkpointing only the LLM often buys most of the memory for less recompute;
- Liger's Triton kernels in the language model (RMSNorm, RoPE, SwiGLU) and its fused linear
  cross-entropy, which computes the loss chunk by chunk from the last hidden states and the
  output head and never holds the ``tokens x vocab`` logits;
- ``torch.compile`` of the language model, in place (``Module.compile``), so parameter names,
  checkpoints and the saved model are unchanged;
- the model FLOPs of a step (:func:`model_flops`) and the measured dense matmul peak of the
  device, which MFU is relative to, as the baselines in ``shared/baselines`` count them.

What cannot run here is refused, never skipped: the spec already refuses GPU-only options for
a CPU job (``backend.core.spec``); :func:`runtime_problems` adds what only the node knows (the
packages installed, the attention kernel with packing).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import time

import torch

from backend.core.spec import Hyperparameters
from worker.training import attention

GPU_EXTRA = "install the GPU extra on the worker: pip install 'vlstudio[gpu]'"


def runtime_problems(h: Hyperparameters, use_gpu: bool) -> list[str]:
    problems = []
    if (h.liger_kernels or h.fused_cross_entropy) and importlib.util.find_spec("liger_kernel") is None:
        problems.append(f"liger_kernels / fused_cross_entropy need the liger-kernel package, not installed here: "
                        f"{GPU_EXTRA}")
    if h.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        problems.append(f"attn_implementation flash_attention_2 needs the flash-attn package, not installed here: "
                        f"{GPU_EXTRA}, or use varlen (torch's own kernel)")
    if h.attn_implementation != "auto":
        problems += attention.problems(h.attn_implementation, use_gpu)
    return problems


def packing_note(h: Hyperparameters, kernel: str, use_gpu: bool) -> str | None:
    """What a packed GPU run loses with a dense-mask kernel (said in the log, not refused: SDPA's
    memory-efficient kernel takes the block-diagonal mask and is still exact)."""
    if h.packing and use_gpu and kernel in ("sdpa", "eager"):
        return (f"note: packing with {kernel} attention computes a dense block-diagonal mask per pack; "
                "attn_implementation varlen or flex_attention (torch's own) or flash_attention_2 skip the "
                "blocks across samples, faster")
    return None


def checkpointing(h: Hyperparameters) -> tuple[bool, bool]:
    """(vision tower, language model): each part's switch, or grad_checkpoint where it is empty."""
    vision = h.grad_checkpoint if h.grad_checkpoint_vision is None else h.grad_checkpoint_vision
    llm = h.grad_checkpoint if h.grad_checkpoint_llm is None else h.grad_checkpoint_llm
    return vision, llm


def apply_checkpointing(model, h: Hyperparameters) -> tuple[bool, bool]:
    vision, llm = checkpointing(h)
    kwargs = {"use_reentrant": False}  # reentrant checkpointing loses the grads of frozen-input blocks
    if vision:
        enable_checkpointing(model.model.vision_tower, kwargs)
    if llm:
        enable_checkpointing(model.model.language_model, kwargs)
    return vision, llm


def enable_checkpointing(part, kwargs: dict) -> None:
    # transformers 5 renamed it (the old name warns until v6)
    if hasattr(part, "activation_checkpointing_enable"):
        part.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        part.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def apply_liger(model) -> str:
    """Liger's RMSNorm, RoPE and SwiGLU on the language model instance (its own model type's
    patch function: Llama, Qwen2, Phi-3, ...). The loss is not patched here: the trainer calls
    the fused cross-entropy itself (:func:`fused_linear_cross_entropy`)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    kind = model.config.text_config.model_type
    fn = MODEL_TYPE_TO_APPLY_LIGER_FN.get(kind)
    if fn is None:
        raise SystemExit(f"liger_kernels: Liger has no kernels for a {kind!r} language model")
    wanted = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
              "fused_linear_cross_entropy": False, "model": model.model.language_model}
    accepted = inspect.signature(fn).parameters
    fn(**{k: v for k, v in wanted.items() if k in accepted})
    return f"Liger {', '.join(k for k in ('rope', 'rms_norm', 'swiglu') if k in accepted)} on the {kind} LLM"


def fused_token_losses(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor,
                       loss_fn=None) -> torch.Tensor:
    """Cross-entropy of every shifted target from the last hidden states and the output head,
    ``[B, T-1]``, 0 where ignored: what the logits path gives, without the logits. The step's
    reduction (weights, denominator) is applied by the caller, the same code for both paths.

    ``loss_fn(weight, hidden, targets)`` returns per-token losses; Liger's fused kernel
    (``reduction="none"``, which takes a per-token upstream gradient) by default.
    """
    if loss_fn is None:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss_fn = LigerFusedLinearCrossEntropyLoss(reduction="none")
    h = hidden[..., :-1, :].reshape(-1, hidden.shape[-1])
    y = labels[..., 1:].reshape(-1).to(h.device)
    out = loss_fn(head.weight, h, y) if head.bias is None else loss_fn(head.weight, h, y, head.bias)
    return out.reshape(labels[..., 1:].shape)


def fused_linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor,
                               num_items_in_batch, loss_fn=None) -> torch.Tensor:
    """The summed loss over the targets divided by ``num_items_in_batch`` (uniform weights),
    with Liger's ``reduction="sum"``: cheaper than the per-token losses, whose backward
    recomputes the chunks. ``loss_fn(weight, hidden, targets)`` returns the sum."""
    if loss_fn is None:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss_fn = LigerFusedLinearCrossEntropyLoss(reduction="sum")
    h = hidden[..., :-1, :].reshape(-1, hidden.shape[-1])
    y = labels[..., 1:].reshape(-1).to(h.device)
    total = loss_fn(head.weight, h, y) if head.bias is None else loss_fn(head.weight, h, y, head.bias)
    count = num_items_in_batch if num_items_in_batch is not None else (y != -100).sum()
    return total / (count.to(total.device) if isinstance(count, torch.Tensor) else count)


def apply_compile(model) -> None:
    model.model.language_model.compile(dynamic=True)


def model_flops(model) -> tuple[float, float]:
    """(FLOPs per LLM token, FLOPs per tile) of a training step, 6 x parameters x tokens with
    each part's own tokens: the LLM, projector and head see the sequence, the ViT the patches of
    each tile (plus its class token), as the shared baselines count them."""
    vision = model.model.vision_tower
    n_vit = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in vision.parameters())
    n_all = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    size = model.config.vision_config.image_size
    patch = model.config.vision_config.patch_size
    side = (size[0] if isinstance(size, list | tuple) else size) // (patch[0] if isinstance(patch, list | tuple) else patch)
    return 6.0 * (n_all - n_vit), 6.0 * n_vit * (side * side + 1)


def measured_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Dense matmul FLOP/s of one device in the training precision (``VLSTUDIO_PEAK_TFLOPS``
    overrides it, e.g. to compare runs against one fixed figure)."""
    if os.environ.get("VLSTUDIO_PEAK_TFLOPS"):
        return float(os.environ["VLSTUDIO_PEAK_TFLOPS"]) * 1e12
    cuda = device.type == "cuda"
    n, iters = (8192, 30) if cuda else (512, 10)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    if cuda:
        torch.cuda.synchronize(device)
    return 2 * n**3 * iters / max(time.perf_counter() - t0, 1e-9)
