"""Training speed, naive vs tuned, through the studio's own launch path, on the benchmark mixture.

Both configurations train one epoch over the same synthetic samples (``bench/mixture.py``: 1- to
13-tile images and short to long texts, the spread of an InternVL mixture) with
``torchrun -m worker.training.train --spec spec.json``, exactly as a studio job runs:

- **naive**: the 2b-full recipe as the studio ran it before packing: padded, length-grouped
  batches of 4 samples, SDPA, no fused kernels, gradient checkpointing everywhere;
- **tuned**: packing to ``max_seq_length`` (one pack per device and step), flash-attention 2
  and Liger's RMSNorm / RoPE / SwiGLU and fused linear cross-entropy where installed (GPU),
  gradient checkpointing in the LLM (and in the ViT unless ``--no-vision-checkpointing``),
  ``torch.compile`` with ``--compile``.

It first measures the data path alone (image decode + tiling + normalisation in one process
and one thread: tiles/s per core), then prints one table: tokens/s, samples/s, MFU (model
FLOPs/s over the measured matmul peak, see ``worker.training.speed.model_flops``), packing efficiency (real tokens / token
slots fed to the model; for naive that is 1 - padding), the pack fill (real tokens / packs x
max_seq_length, from the plan), data-loader wait, peak memory (GPU allocated, or on the
CPU the trainer's peak RSS), and one JSON line with every figure.

    python bench/train_speed.py --cpu --out /tmp/speed            # tiny shapes on the CPU (~5 min)
    python bench/train_speed.py --out /tmp/speed \\
        --anchor shared/baselines/gpu_trainer_anchor.py           # 2B shapes on one GPU + the anchor

On the CPU the tiles are 112 px (16 tokens each) and the texts a sixteenth as long, so the
mixture keeps its shape at a sixteenth of the length (max_seq_length 512 for 8192): the
efficiency columns are meaningful there, the speed columns are not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_train_2b import LLM_1_9B, TINY_LLM, TINY_VISION, VISION_300M, build_model  # noqa: E402
from bench.mixture import shapes  # noqa: E402

#: tiles (thumbnail included) -> the grid (cols, rows) whose image plan_tiles cuts into them
GRIDS = {1: (1, 1), 3: (2, 1), 5: (2, 2), 7: (3, 2), 9: (4, 2), 13: (4, 3)}
WORDS = "the chart shows a steady rise in sales over four quarters with a dip in the third".split()


def build_data(root: Path, n: int, tile_px: int, text_scale: float, tokenizer) -> Path:
    import numpy as np
    from PIL import Image

    from backend.core.tiling import plan_tiles

    root.mkdir(parents=True, exist_ok=True)
    per_word = len(tokenizer(" ".join(WORDS * 10), add_special_tokens=False)["input_ids"]) / (10 * len(WORDS))
    rng = random.Random(0)
    recs = []
    for i, s in enumerate(shapes(n, seed=1)):
        words = max(1, round(s.text_tokens * text_scale / per_word))
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        q, a = text[: len(text) // 4] or "Describe.", text[len(text) // 4:] or "Yes."
        rec = {"id": i, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        if s.tiles:
            cols, rows = GRIDS[s.tiles]
            w, h = cols * tile_px, rows * tile_px
            assert plan_tiles(w, h, max_num=12, image_size=tile_px).num_tiles == s.tiles, (w, h, s.tiles)
            arr = np.random.default_rng(i).integers(0, 255, (max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
            Image.fromarray(arr).resize((w, h)).save(root / f"{i}.jpg", quality=90)
            rec["image"] = f"{i}.jpg"
        recs.append(rec)
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    meta = {"mixture": {"root": str(root), "annotation": str(root / "ann.jsonl"), "repeat_time": 1, "length": n}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root / "meta.json"


def data_rate(meta: Path, tokenizer, hyper, seconds: float = 8.0) -> dict:
    """Decode + tile + normalise + tokenize in this process on one thread: tiles/s per core."""
    import torch

    from backend.core.spec import tokens_per_tile_for
    from backend.core.templates import get_template
    from worker.training.data import SupervisedDataset

    torch.set_num_threads(1)
    ds = SupervisedDataset(meta, tokenizer, get_template("internlm2-chat"), max_seq_length=hyper.max_seq_length,
                           max_dynamic_patch=hyper.max_dynamic_patch, image_size=hyper.force_image_size or 448,
                           tokens_per_tile=tokens_per_tile_for(hyper.force_image_size))
    tiles = samples = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tiles += len(ds[samples % len(ds)]["pixel_values"])
        samples += 1
    dt = time.perf_counter() - t0
    return {"tiles_per_second_per_core": tiles / dt, "samples_per_second_per_core": samples / dt,
            "tile_px": hyper.force_image_size or 448}


def launch(run: Path, spec) -> tuple[int, int]:
    """torchrun as the worker runs it; (exit code, the trainer's peak RSS in KiB)."""
    run.mkdir(parents=True, exist_ok=True)
    spec.write(run / "spec.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(29600 + os.getpid() % 300), "-m", "worker.training.train",
           "--spec", str(run / "spec.json")]
    # A child python reports the peak RSS of its own descendants (torchrun and the trainer) only.
    probe = ("import resource, subprocess, sys; log = open(sys.argv[1], 'wb'); "
             "rc = subprocess.call(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", probe, str(run / "training_log.txt"), *cmd], cwd=REPO,
                         stdout=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"})
    lines = out.stdout.decode().split()
    return out.returncode, int(lines[-1]) if lines else 0


def figures(run: Path, rss_kib: int, n_samples: int, wall: float) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    steady = rows[2:] or rows

    def med(key):
        vals = [r[key] for r in steady if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    gpu = max((r.get("gpu_memory_gib", 0.0) for r in rows), default=0.0)
    # the plan's fill: real tokens / (packs x max_seq_length), as the training log states it
    fill = re.search(r"efficiency ([\d.]+)% \(real tokens / packs", (run / "training_log.txt").read_text())
    return {"steps": len(rows), "pack_fill": float(fill.group(1)) / 100 if fill else None, "tokens_per_second": med("tokens_per_second"),
            "samples_per_second": med("samples_per_second"), "mfu": med("mfu"),
            "packing_efficiency": statistics.mean(r["packing_efficiency"] for r in rows),
            "dataloader_wait_fraction": statistics.mean(r["dataloader_wait_fraction"] for r in rows),
            "peak_memory_gib": gpu if gpu else rss_kib / 2**20, "memory_kind": "GPU allocated" if gpu else "CPU RSS",
            "final_loss": rows[-1]["loss"], "samples": n_samples, "wall_seconds_including_start": round(wall, 1)}


def configs(cpu: bool, vision_ckpt: bool, compile_lm: bool) -> dict[str, dict]:
    import importlib.util

    naive = {"packing": False, "per_device_batch_size": 4, "grad_checkpoint": True}
    tuned = {"packing": True, "per_device_batch_size": 1, "grad_checkpoint": True,
             "grad_checkpoint_vision": vision_ckpt, "torch_compile": compile_lm}
    if not cpu:
        if importlib.util.find_spec("flash_attn") is not None:
            tuned["attn_implementation"] = "flash_attention_2"
        if importlib.util.find_spec("liger_kernel") is not None:
            tuned.update(liger_kernels=True, fused_cross_entropy=True)
    return {"naive": naive, "tuned": tuned}


def print_table(results: dict[str, dict]) -> None:
    cols = [("tokens_per_second", "tokens/s", "{:,.0f}"), ("samples_per_second", "samples/s", "{:.2f}"),
            ("mfu", "MFU", "{:.1%}"), ("packing_efficiency", "real/fed tokens", "{:.1%}"),
            ("pack_fill", "pack fill", "{:.1%}"),
            ("dataloader_wait_fraction", "data wait", "{:.1%}"), ("peak_memory_gib", "peak GiB", "{:.2f}"),
            ("steps", "steps", "{}")]
    print("| path | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in results.items():
        cells = [fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if "naive" in results and "tuned" in results and results["naive"]["tokens_per_second"]:
        print(f"tuned / naive tokens/s: {results['tuned']['tokens_per_second'] / results['naive']['tokens_per_second']:.2f}x")


def run_anchor(path: Path, out: Path, cpu: bool) -> str:
    """The shared baseline in the same call, as the common reference (its own output, verbatim;
    on the CPU its TINY=1 smoke shapes)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29733", str(path)]
    env = {**os.environ, **({"TINY": "1"} if cpu else {})}
    done = subprocess.run(cmd, cwd=out, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the anchor failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stderr[-1500:] + "\n" + done.stdout[-1500:]  # its JSON figures (stdout) last, whole


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--samples", type=int, default=None, help="samples in the epoch (default: 48 CPU, 160 GPU)")
    ap.add_argument("--only", choices=["naive", "tuned"], default=None)
    ap.add_argument("--no-vision-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="tuned: torch.compile the language model")
    ap.add_argument("--anchor", type=Path, default=None, help="also run shared/baselines/gpu_trainer_anchor.py")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from backend.core.presets import resolve
    from backend.core.spec import TrainingSpec

    cpu = args.cpu
    n = args.samples or (48 if cpu else 160)
    model = build_model(args.out / "model", TINY_VISION if cpu else VISION_300M, TINY_LLM if cpu else LLM_1_9B)
    tokenizer = AutoTokenizer.from_pretrained(model)
    base = {"gpus": 0 if cpu else 1, "nproc_per_node": 1, "global_batch_size": None, "max_steps": -1,
            "num_train_epochs": 1.0, "max_dynamic_patch": 12, "max_seq_length": 512 if cpu else 8192,
            "force_image_size": 112 if cpu else None, "save_steps": 0, "report_to": "none", "warmup_ratio": 0.0,
            "zero_stage": 1, "dataloader_num_workers": None}
    meta = build_data(args.out / "data", n, 112 if cpu else 448, 1 / 16 if cpu else 1.0, tokenizer)
    rate = data_rate(meta, tokenizer, resolve("2b-full", base))
    print(f"data path: {rate['tiles_per_second_per_core']:.1f} tiles/s per core "
          f"({rate['samples_per_second_per_core']:.1f} samples/s, {rate['tile_px']} px tiles)", flush=True)
    results = {}
    for name, over in configs(cpu, not args.no_vision_checkpointing, args.compile).items():
        if args.only and name != args.only:
            continue
        hyper = resolve("2b-full", {**base, **over})
        run = args.out / name
        spec = TrainingSpec(job_id=0, model_path=str(model), template="internlm2-chat", meta_path=str(meta),
                            output_dir=str(run), hyper=hyper)
        t0 = time.monotonic()
        rc, rss = launch(run, spec)
        if rc != 0:
            print((run / "training_log.txt").read_text()[-5000:])
            raise SystemExit(f"{name}: training failed (exit {rc})")
        results[name] = {**figures(run, rss, n, time.monotonic() - t0), "options": over}
        print(f"{name}: done in {results[name]['wall_seconds_including_start']} s", flush=True)
    print_table(results)
    anchor = run_anchor(args.anchor.resolve(), args.out, cpu) if args.anchor else None
    if anchor:
        print("anchor (shared/baselines/gpu_trainer_anchor.py):\n" + anchor)
    print(json.dumps({"device": "cpu" if cpu else device_name(), "date": time.strftime("%Y-%m-%d"),
                      "data_path": rate, "results": results}))


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
