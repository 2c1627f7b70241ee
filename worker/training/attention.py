"""The attention kernels a run can use, which one ``auto`` picks, and torch's own varlen kernel
as a transformers attention function.

The choices (``Hyperparameters.attn_implementation``):

- ``flash_attention_2``: the flash-attn package (a CUDA build that is often unavailable). Packed
  batches run as one flattened row with the pack collator's cumulative sequence lengths.
- ``varlen``: torch's own ``torch.nn.attention.varlen.varlen_attn`` (the flash-attention kernels
  built into torch, CUDA, bf16/fp16), the same one-row layout and ``cu_seqlens``; nothing to
  install or compile. Registered here with transformers under the name ``varlen``.
- ``flex_attention``: torch's FlexAttention. transformers turns the packed positions (restarting
  at 0 per sample) into a sparse block mask, so blocks that cross samples are skipped; compiled
  by ``torch.compile`` (Triton) at the first steps. Its backward runs on CUDA only.
- ``sdpa`` / ``eager``: a dense ``[B, 1, T, T]`` block-diagonal mask per pack (exact, but the
  attention work of the whole square).

``auto`` picks, on a GPU: flash-attention 2 where flash-attn is installed, else ``varlen``
where torch has it and the GPU runs torch's flash kernels (compute capability 8.0+), else
``flex_attention``, else SDPA; on the CPU SDPA. The vision tower attends within one tile of a
fixed length, with no mask, so SDPA already runs its flash kernel there: it gets
flash-attention 2 when that is the LLM's, SDPA otherwise (:func:`per_part`).
"""

from __future__ import annotations

import importlib.util
import inspect

import torch

#: kernels that run a packed micro-batch as one row with cumulative sequence lengths
ONE_ROW = ("flash_attention_2", "varlen")
#: kernels that only train on CUDA
GPU_ONLY = ("flash_attention_2", "varlen", "flex_attention")
VARLEN = "varlen"


def has_varlen() -> bool:
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def has_flex() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def gpu_capability() -> tuple[int, int] | None:
    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def choose(requested: str, use_gpu: bool) -> str:
    """The LLM's kernel: the request, or for ``auto`` the fastest that runs here."""
    if requested != "auto":
        return requested
    if not use_gpu:
        return "sdpa"
    if has_flash_attn():
        return "flash_attention_2"
    cap = gpu_capability()
    if has_varlen() and cap is not None and cap >= (8, 0):
        return VARLEN
    if has_flex():
        return "flex_attention"
    return "sdpa"


def per_part(kernel: str) -> dict[str, str]:
    """What ``from_pretrained`` gets: the LLM's kernel for the text model, the vision tower's
    (flash-attention 2 or SDPA: one tile, no mask) and the top level's."""
    vision = "flash_attention_2" if kernel == "flash_attention_2" else ("eager" if kernel == "eager" else "sdpa")
    return {"text_config": kernel, "vision_config": vision, "": vision}


def problems(kernel: str, use_gpu: bool) -> list[str]:
    """Why ``kernel`` cannot train on this node (empty: it can)."""
    if kernel in GPU_ONLY and not use_gpu:
        return [f"attn_implementation {kernel} trains on GPUs only; this node trains on the CPU"]
    if kernel == VARLEN:
        if not has_varlen():
            return [f"attn_implementation varlen needs torch.nn.attention.varlen (torch 2.10 or later); this "
                    f"node has torch {torch.__version__}: use flex_attention or sdpa"]
        cap = gpu_capability()
        if cap is not None and cap < (8, 0):
            return [f"attn_implementation varlen runs torch's flash kernels, which need a GPU of compute "
                    f"capability 8.0 or later (this one: {cap[0]}.{cap[1]}): use flex_attention or sdpa"]
    if kernel == "flex_attention":
        if not has_flex():
            return [f"attn_implementation flex_attention needs torch.nn.attention.flex_attention; this node has "
                    f"torch {torch.__version__}: use sdpa"]
        if use_gpu and importlib.util.find_spec("triton") is None:
            return ["attn_implementation flex_attention is compiled with Triton, which is not installed here"]
    return []


# ------------------------------------------------------------------ torch's varlen kernel
def varlen_kernel(query, key, value, cu_q, cu_k, max_q: int, max_k: int, scale: float | None) -> torch.Tensor:
    """``torch.nn.attention.varlen.varlen_attn``, causal, over ``[T, H, D]`` tensors, whichever
    of its signatures this torch has: 2.10 ``is_causal=`` and no ``scale`` (the query is scaled
    instead), 2.11 ``scale``/``window_size=(-1, 0)``, 2.12+ also ``enable_gqa`` (before it, the
    key/value heads are repeated for grouped-query attention)."""
    from torch.nn.attention.varlen import varlen_attn

    if query.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError("attn_implementation varlen runs in bf16 or fp16; this model computes in "
                         f"{query.dtype} (train on a GPU with bf16, or use sdpa)")
    params = inspect.signature(varlen_attn).parameters
    kwargs: dict = {}
    default = query.shape[-1] ** -0.5
    if "scale" in params:
        kwargs["scale"] = scale
    elif scale is not None and abs(scale - default) > 1e-12 * default:
        query = query * (scale / default)
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)
    else:
        kwargs["is_causal"] = True
    if key.shape[1] != query.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            rep = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    return varlen_attn(query, key, value, cu_q, cu_k, max_q, max_k, **kwargs)


def _target_dtype(query: torch.Tensor) -> torch.dtype:
    """The tensors' own dtype, or under autocast (fp32 weights at ZeRO 0) the autocast dtype, as
    transformers does for flash-attention (the kernel runs in bf16/fp16 only)."""
    if query.dtype == torch.float32 and torch.is_autocast_enabled(query.device.type):
        return torch.get_autocast_dtype(query.device.type)
    return query.dtype


def varlen_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None,
                             dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, None]:
    """A transformers attention function (``[B, H, T, D]`` in, ``[B, T, H, D]`` out) over
    :func:`varlen_kernel`. The sequences are, in order of precedence: the ``cu_seq_lens_q`` the
    trainer passes with a packed batch flattened to one row; the real tokens of a 2D padding
    mask (unpadded, as flash-attention does); else each row is one sequence."""
    if dropout:
        raise ValueError("attn_implementation varlen has no attention dropout")
    if not getattr(module, "is_causal", True):
        raise ValueError("attn_implementation varlen is causal: the vision tower uses sdpa")
    b, h, t, d = query.shape
    dtype = _target_dtype(query)
    q, k, v = (x.transpose(1, 2).to(dtype) for x in (query, key, value))  # [B, T, H, D]
    cu = kwargs.get("cu_seq_lens_q")
    index = None
    if cu is not None:
        if b != 1:
            raise ValueError("attn_implementation varlen: cumulative sequence lengths need the batch as one row")
        cu, longest = cu.to(q.device, torch.int32), int(kwargs["max_length_q"])
        q, k, v = q[0], k[0], v[0]
    elif attention_mask is not None and attention_mask.dim() == 2:
        mask = attention_mask[:, -t:].bool()
        lengths = mask.sum(dim=1, dtype=torch.int32)
        index = mask.reshape(-1).nonzero().squeeze(1)
        cu = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        longest = int(lengths.max())
        q, k, v = (x.reshape(b * t, x.shape[2], d)[index] for x in (q, k, v))
    elif attention_mask is None:
        cu = torch.arange(0, (b + 1) * t, t, dtype=torch.int32, device=q.device)
        longest = t
        q, k, v = (x.reshape(b * t, x.shape[2], d) for x in (q, k, v))
    else:
        raise ValueError(f"attn_implementation varlen cannot take a {attention_mask.dim()}D attention mask")
    out = varlen_kernel(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, longest, longest, scaling)
    if index is not None:
        full = out.new_zeros(b * t, h, d)
        full[index] = out
        out = full
    return out.reshape(b, t, h, d).to(query.dtype), None


def register() -> None:
    """Make ``varlen`` an attention implementation transformers accepts (idempotent): the
    attention function above, and the flash-attention mask (None, or the 2D padding mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, flash_attention_mask)


register()
