"""Evaluation generation throughput: samples/s and CPU-seconds per sample of the evaluation's
batched generation (``worker.evaluation.generation.Generator``: left-padded batches, one forward
per new token with the KV cache, stop on the template's end token) for several batch sizes, on
the demo model (or ``--model PATH``), with the answers checked equal to one-by-one generation.

    .venv/bin/python bench/eval_generation.py [--samples 32] [--new-tokens 16] [--batches 1,4,16]

Prints a table; wall figures depend on the machine's load (CPU-seconds less so).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--device", default=None)
    a = p.parse_args()

    import torch

    from backend.core.demo_data import generate
    from worker.demo_model import build_demo_model
    from worker.evaluation.generation import Generator

    with tempfile.TemporaryDirectory() as tmp:
        model = a.model or build_demo_model(Path(tmp) / "demo", seed=3)
        gen = Generator(model, device=a.device)
        prompts = [gen.prompt(r["conversations"][:1], [Image.open(io.BytesIO(png)).convert("RGB")])
                   for _, png, r in generate(a.samples, seed=5, kinds=("colour", "shape"))]
        reference = None
        print(f"model {model} on {gen.device}, {a.samples} samples, {a.new_tokens} new tokens, "
              f"torch threads {torch.get_num_threads()}")
        print(f"{'batch':>5} {'wall s':>8} {'samples/s':>10} {'CPU s/sample':>13}  answers")
        for bs in (int(x) for x in a.batches.split(",")):
            t0, c0 = time.perf_counter(), time.process_time()
            answers = []
            for i in range(0, len(prompts), bs):
                answers += gen.generate(prompts[i:i + bs], max_new_tokens=a.new_tokens)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            reference = reference or answers
            same = "same as batch 1" if answers == reference else "DIFFERENT from batch 1"
            print(f"{bs:>5} {wall:>8.2f} {len(prompts) / wall:>10.2f} {cpu / len(prompts):>13.3f}  {same}")


if __name__ == "__main__":
    main()
