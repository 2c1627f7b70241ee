"""Benchmark: import (and export back) a Mini-InternVL-Chat-2B-V1-5-shaped original checkpoint.

Builds an original ``internvl_chat`` folder with the real shapes (InternViT-300M: hidden 1024,
24 layers, 16 heads, MLP 4096, 448 px / 14 px patches; ``mlp1`` 4096 -> 2048; InternLM2-1.8B:
hidden 2048, 24 layers, 16 heads, 8 key-value heads, intermediate 8192, vocabulary 92553), random
bf16 weights in several safetensors shards (about 4.4 GB), then runs the conversion in a fresh
process and reports wall time and peak resident memory, against the model's size in fp32.

    .venv/bin/python bench/convert.py [--workdir /tmp] [--shards 4] [--no-export] [--keep]

Needs about 13 GB of free disk (source, import, export). Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VISION = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": 1024,
          "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096, "patch_size": 14,
          "image_size": 448, "num_channels": 3, "qkv_bias": True, "qk_normalization": False,
          "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "hidden_act": "gelu", "drop_path_rate": 0.1,
          "dropout": 0.0, "attention_dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
          "use_flash_attn": True, "torch_dtype": "bfloat16"}
LLM = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "hidden_size": 2048,
       "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8, "intermediate_size": 8192,
       "vocab_size": 92553, "hidden_act": "silu", "rms_norm_eps": 1e-5, "bias": False, "rope_theta": 1000000,
       "rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 32768,
       "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
       "torch_dtype": "bfloat16"}
CONFIG = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": "internlm2-chat",
          "downsample_ratio": 0.5, "ps_version": "v2", "select_layer": -1, "force_image_size": 448,
          "dynamic_image_size": True, "use_thumbnail": True, "max_dynamic_patch": 12, "min_dynamic_patch": 1,
          "torch_dtype": "bfloat16", "llm_config": LLM, "vision_config": VISION}
SPECIAL = ["<|im_start|>", "<|im_end|>"]
SP_PIECES = 400
ADDED = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]


def write_tokenizer(folder: Path) -> None:
    """A small sentencepiece model in InternLM2's style with the InternVL tokens after it (the real
    tokenizer cannot be downloaded here; its size does not matter to the weights benchmark)."""
    import sentencepiece as spm

    out = io.BytesIO()
    corpus = ["The quick brown fox jumps over the lazy dog 0123456789.", "你好，世界。书生多模态大模型。"] * 50
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=out, vocab_size=SP_PIECES,
                                   model_type="bpe", byte_fallback=True, user_defined_symbols=SPECIAL, character_coverage=1.0,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   minloglevel=2)
    (folder / "tokenizer.model").write_bytes(out.getvalue())
    base = {0: "<unk>", 1: "<s>", 2: "</s>", 3: SPECIAL[0], 4: SPECIAL[1]}
    base.update({SP_PIECES + i: t for i, t in enumerate(ADDED)})
    decoder = {str(i): {"content": c, "special": True, "normalized": False} for i, c in base.items()}
    config = {"tokenizer_class": "InternLM2Tokenizer", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "</s>", "added_tokens_decoder": decoder}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_checkpoint(folder: Path, shards: int) -> tuple[int, int]:
    """Random bf16 weights with the original names and shapes; returns (parameters, bytes)."""
    import torch
    from safetensors.torch import save_file

    from worker.convert.configs import parse_original
    from worker.convert.layout import all_links

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    write_tokenizer(folder)
    m = parse_original(CONFIG)
    names = [(link.original, link.shape) for link in all_links(m.vision, m.scale, m.text)]
    params = sum(torch.Size(shape).numel() for _, shape in names)
    per_shard = params / shards
    pool = torch.randn(1 << 24, dtype=torch.float32).to(torch.bfloat16) * 0.02  # tiled: fast, still varied
    weight_map, shard, size, index, total = {}, {}, 0, 0, 0

    def flush() -> None:
        nonlocal shard, size, index
        fname = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in shard})
        shard, size, index = {}, 0, index + 1

    for name, shape in names:
        n = torch.Size(shape).numel()
        offset = (hash(name) % (1 << 20))
        reps = (offset + n) // pool.numel() + 1
        shard[name] = pool.repeat(reps)[offset:offset + n].reshape(shape).clone()
        size += n
        total += 2 * n
        if size >= per_shard and index < shards - 1:
            flush()
    flush()
    index_data = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_data))
    return params, total


def child(action: str, src: str, dst: str) -> None:
    """Run one conversion in this (fresh) process and print its figures as JSON."""
    import psutil

    from worker.convert import export_model, import_checkpoint

    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if action == "import":
        info = import_checkpoint(Path(src), Path(dst))
        extra = {"param_count": info.param_count}
    else:
        export_model(Path(src), Path(dst), "original")
        extra = {}
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss": peak_rss(), "baseline_rss": baseline, **extra}))


def peak_rss() -> int:
    """This process's peak resident memory in bytes. Linux's VmHWM belongs to the process image, so
    it is not inherited from the parent that forked us; ``ru_maxrss`` is, and would report the
    benchmark builder's size."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(action: str, src: Path, dst: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", action, str(src), str(dst)], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def spot_check(src: Path, native: Path) -> None:
    """One fused tensor, split: layer 5's k_proj is the rows [4*64, 5*64) of each key-value group."""
    import torch
    from safetensors import safe_open

    def get(folder: Path, name: str) -> torch.Tensor:
        index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        with safe_open(str(folder / index[name]), framework="pt") as f:
            return f.get_tensor(name)

    wqkv = get(src, "language_model.model.layers.5.attention.wqkv.weight").reshape(8, 4, 128, 2048)
    k = get(native, "language_model.model.layers.5.self_attn.k_proj.weight")
    assert torch.equal(k, wqkv[:, 2].reshape(8 * 128, 2048)), "k_proj does not match wqkv"


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("ACTION", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="vlstudio-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        params, size = write_checkpoint(work / "original", args.shards)
        print(f"built a 2B-shaped original checkpoint: {params:,} parameters, {gb(size)} bf16 in {args.shards} "
              f"shards ({time.perf_counter() - t0:.0f} s); fp32 size would be {gb(4 * params)}")
        rows = [("import original -> native", measure("import", work / "original", work / "native"))]
        spot_check(work / "original", work / "native")
        if not args.no_export:
            rows.append(("export native -> original", measure("export", work / "native", work / "export")))
        for label, r in rows:
            print(f"{label}: {r['seconds']:.1f} s wall, peak RSS {gb(r['peak_rss'])} "
                  f"(process after imports {gb(r['baseline_rss'])}); "
                  f"{100 * r['peak_rss'] / (4 * params):.0f}% of the fp32 model size")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
