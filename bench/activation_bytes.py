"""Calibrate the activation term of the GPU-memory estimate (backend/services/memory.py) on the
models vlstudio actually trains: the bytes autograd keeps for the backward pass, per token, per
hidden unit, per layer, of one native InternLM2-1.8B decoder layer (it runs as Llama) and one
InternViT-300M layer, in bf16 with the SDPA attention kernel.

What is measured: every tensor autograd saves during the forward pass (through
``torch.autograd.graph.saved_tensors_hooks``), counted once per storage, parameters excluded;
the per-layer figure is the difference between a 2-layer and a 1-layer model. This is the
memory an activation-holding step keeps beyond weights, gradients and optimizer states; it does
not see allocator fragmentation or kernel workspaces (the estimate's 1.10 factor and 1.5 GiB).
Runs on CPU (the saved tensors are those the same modules save on a GPU, except that CUDA's
flash-attention kernel may save a different softmax statistic).

    python bench/activation_bytes.py [--seq 1024] [--llm-hidden 2048] [--vit-hidden 1024]

(the bytes per token per hidden unit depend on the shape ratios, which the smaller widths keep;
the full widths take long on a loaded CPU).
"""

from __future__ import annotations

import argparse

import torch


def saved_bytes(model: torch.nn.Module, run) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    out.float().sum().backward()
    return sum(seen.values())


def llm_layer_bytes(layers: int, seq: int, hidden: int) -> int:
    from transformers import LlamaConfig, LlamaModel

    # InternLM2-1.8B's ratios: intermediate 4 x hidden, head dim 128, half as many kv heads
    heads = max(1, hidden // 128)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), vocab_size=16,
                      attn_implementation="sdpa")
    model = LlamaModel(cfg).to(torch.bfloat16).train()
    x = torch.randn(1, seq, hidden, dtype=torch.bfloat16, requires_grad=True)
    return saved_bytes(model, lambda: model(inputs_embeds=x).last_hidden_state)


def vit_layer_bytes(layers: int, hidden: int) -> int:
    from transformers.models.internvl import InternVLVisionConfig, InternVLVisionModel

    # InternViT-300M's ratios: intermediate 4 x hidden, head dim 64
    cfg = InternVLVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                               num_attention_heads=max(1, hidden // 64), image_size=448, patch_size=14, attention_bias=True,
                               use_qk_norm=False, norm_type="layer_norm", use_mean_pooling=True,
                               attn_implementation="sdpa")
    model = InternVLVisionModel(cfg).to(torch.bfloat16).train()
    pixels = torch.randn(1, 3, 448, 448, dtype=torch.bfloat16)
    return saved_bytes(model, lambda: model(pixel_values=pixels).last_hidden_state)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--llm-hidden", type=int, default=2048, help="InternLM2-1.8B: 2048")
    ap.add_argument("--vit-hidden", type=int, default=1024, help="InternViT-300M: 1024")
    args = ap.parse_args()
    torch.manual_seed(0)
    h, d = args.llm_hidden, args.vit_hidden
    llm = llm_layer_bytes(2, args.seq, h) - llm_layer_bytes(1, args.seq, h)
    vit = vit_layer_bytes(2, d) - vit_layer_bytes(1, d)
    print(f"LLM layer (hidden {h}, seq {args.seq}): {llm / 2**20:.1f} MiB = "
          f"{llm / (args.seq * h):.1f} bytes per token per hidden unit")
    print(f"ViT layer (hidden {d}, 1025 tokens): {vit / 2**20:.1f} MiB = "
          f"{vit / (1025 * d):.1f} bytes per token per hidden unit")


if __name__ == "__main__":
    main()
