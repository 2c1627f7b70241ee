"""GPU check: a Mini-InternVL-Chat-2B-shaped model trains a few steps through the studio's own
launch path, and the figures go to docs/performance.md.

The model has random weights and the real shapes: InternViT-300M (1024 wide, 24 layers, 16
heads, MLP 4096, 448 px tiles, 14 px patches, qkv bias, layer scale) and a 1.9B Llama-shaped
LLM (InternLM2-1.8B's widths: 2048 hidden, 24 layers, 16 heads / 8 KV heads, MLP 8192, vocab
92553), projector LayerNorm(4096) -> 2048 -> 2048. The data are synthetic images of mixed
sizes (1 to 7 tiles each at max_dynamic_patch 6) with short conversations. Training runs
exactly as a studio job does: ``torchrun -m worker.training.train --spec spec.json`` with the
2b-full recipe (bf16, ZeRO-1, grad checkpointing, drop path 0.1, group_by_length), on one GPU.

Run on a machine with a CUDA GPU, from the repository root::

    python bench/gpu_train_2b.py --out /tmp/bench2b            # ~5 minutes on one H100
    python bench/gpu_train_2b.py --cpu-smoke --out /tmp/smoke   # plumbing check, tiny shapes, CPU

It prints one JSON line with tokens/s (non-padding tokens, median over the steps after the
warm-up), samples/s, seconds per step and the peak GPU memory allocated by PyTorch.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VISION_300M = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
LLM_1_9B = {"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8,
            "intermediate_size": 8192, "vocab_size": 92553}
TINY_VISION = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}
TINY_LLM = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 384, "vocab_size": 1024}


def build_model(out: Path, vision: dict, llm: dict) -> Path:
    import torch
    from transformers import GenerationConfig, InternVLConfig, InternVLForConditionalGeneration, LlamaConfig
    from transformers.models.internvl import InternVLVisionConfig

    from worker.demo_model import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(**vision, image_size=448, patch_size=14, attention_bias=True,
                                           layer_norm_eps=1e-6, layer_scale_init_value=0.1, use_mean_pooling=False),
        text_config=LlamaConfig(**llm, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=256, downsample_ratio=0.5,
        tie_word_embeddings=False)
    config.template = "internlm2-chat"
    torch.manual_seed(0)
    # random init of 2.2B parameters takes a minute on CPU cores, a second on a GPU
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = InternVLForConditionalGeneration(config).to(torch.bfloat16)
    model = model.cpu()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {n / 1e9:.2f}B parameters written to {out}", flush=True)
    return out


def build_data(root: Path, n: int) -> Path:
    """Synthetic images of mixed shapes (so the tile counts vary like real data)."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    sizes = [(448, 448), (896, 448), (1344, 896), (800, 1200), (1920, 1080), (640, 480)]
    recs = []
    for i in range(n):
        w, h = rng.choice(sizes)
        arr = np.random.default_rng(i).integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(arr).resize((w, h)).save(root / f"{i}.jpg", quality=90)
        q = "Describe the picture in detail. " * rng.randint(1, 4)
        a = "The picture shows a noisy pattern of coloured blocks. " * rng.randint(2, 12)
        recs.append({"id": i, "image": f"{i}.jpg", "conversations": [{"from": "human", "value": q},
                                                                     {"from": "gpt", "value": a}]})
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    meta = {"synthetic": {"root": str(root), "annotation": str(root / "ann.jsonl"), "repeat_time": 1, "length": n}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root / "meta.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--per-device", type=int, default=4)
    ap.add_argument("--max-dynamic-patch", type=int, default=6)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the plumbing only")
    args = ap.parse_args()

    from backend.core.presets import resolve
    from backend.core.spec import TrainingSpec

    smoke = args.cpu_smoke
    model = build_model(args.out / "model", TINY_VISION if smoke else VISION_300M, TINY_LLM if smoke else LLM_1_9B)
    meta = build_data(args.out / "data", n=args.per_device * (args.steps + 2))
    hyper = resolve("2b-full", {
        "gpus": 0 if smoke else 1, "nproc_per_node": 1, "global_batch_size": None, "max_steps": args.steps,
        "per_device_batch_size": args.per_device, "max_dynamic_patch": args.max_dynamic_patch,
        "max_seq_length": 4096, "save_steps": 0, "report_to": "none", "warmup_ratio": 0.0,
        "dataloader_num_workers": 2 if smoke else 8, "zero_stage": 1})
    run = args.out / "run"
    run.mkdir(parents=True, exist_ok=True)
    spec = TrainingSpec(job_id=0, model_path=str(model), template="internlm2-chat", meta_path=str(meta),
                        output_dir=str(run), hyper=hyper)
    spec.write(run / "spec.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "1",
           "--master_addr", "127.0.0.1", "--master_port", "29611", "-m", "worker.training.train",
           "--spec", str(run / "spec.json")]
    t0 = time.monotonic()
    with open(run / "training_log.txt", "wb") as log:
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t0
    # step rows only: the trainer also writes a "data" row (what each dataset contributed) and "gpu" rows
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r] if rc == 0 else []
    if not rows:
        print((run / "training_log.txt").read_text()[-5000:])
        raise SystemExit(f"training failed (exit {rc})")
    steady = rows[2:] or rows
    print(json.dumps({
        "device": "cpu (smoke)" if smoke else gpu_name(), "steps": len(rows), "per_device_batch_size": args.per_device,
        "tokens_per_second": statistics.median(r["tokens_per_second"] for r in steady),
        "samples_per_second": statistics.median(r["samples_per_second"] for r in steady),
        "tiles_per_batch": statistics.mean(r["tiles_per_batch"] for r in rows),
        "padding_ratio": statistics.mean(r["padding_ratio"] for r in rows),
        "peak_gpu_memory_gib": max((r.get("gpu_memory_gib", 0.0) for r in rows), default=0.0),
        "final_loss": rows[-1]["loss"], "wall_seconds_including_start": round(wall, 1)}))


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


if __name__ == "__main__":
    main()
