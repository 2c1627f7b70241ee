"""Training speed, naive vs tuned, through the studio's own launch path, on the benchmark mixture.

Both configurations train one epoch over the same synthetic samples (``bench/mixture.py``: 1- to
13-tile images and short to long texts, the spread of an InternVL mixture) with
``torchrun -m worker.training.train --spec spec.json``, exactly as a studio job runs:

- **naive**: the 2b-full recipe as the studio ran it before packing: padded, length-grouped
  batches of 4 samples, SDPA, no fused kernels, gradient checkpointing everywhere;
- **tuned**: packing to ``max_seq_length`` (one pack per device and step), attention ``auto``
  (on a GPU flash-attention 2 where installed, else torch's own ``varlen`` kernel over the
  packs), Liger's RMSNorm / RoPE / SwiGLU and fused linear cross-entropy where installed (GPU),
  gradient checkpointing in the LLM (and in the ViT unless ``--no-vision-checkpointing``),
  ``torch.compile`` with ``--compile``;
- **anchor** (``--anchor``): the shared baseline ``gpu_trainer_anchor.py`` (HF Trainer +
  DeepSpeed ZeRO-1 on fixed 7-tile batches) in the same call, its MFU over the same measured peak.

Every path runs even when another fails (its row says FAILED and why; the exit status is 1);
``--timeout`` bounds each path: past it, everything the path started is killed, trainers
included (torchrun starts each in a session of its own, so they are found by the spec path on
their command line), with the compile locks it left in ``--torch-extensions``. The trainers keep
the caller's ``PYTHONPATH`` (the repository is put first).

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
import signal
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


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a launched trainer: the repository first on PYTHONPATH, whatever was on
    it kept (a GPU machine may carry packages there)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", **extra}


def locks(extensions: Path | None) -> set[Path]:
    return set(extensions.glob("*/lock")) if extensions is not None and extensions.is_dir() else set()


def stop_everything_of(marker: str) -> list[int]:
    """SIGKILL every process whose command line names ``marker`` (this path's spec or script), with
    its process group: torchrun starts each trainer in a session of its own, so killing the agent's
    group alone would leave them running (and holding the GPU)."""
    from worker import processes

    mine = [p for p in processes.all_processes() if p.pid != os.getpid() and any(marker in a for a in p.argv)]
    processes.kill_groups(mine)
    return [p.pid for p in mine]


def run_bounded(cmd: list[str], *, marker: str, log_path: Path, timeout: float, cwd: Path, env: dict,
                extensions: Path | None) -> dict:
    """Run ``cmd`` with its output to ``log_path``; past ``timeout`` seconds kill everything it
    started (found by ``marker``) and the JIT-compile locks it left in a private extensions folder
    (a stale lock makes the next build wait forever). Returns rc, timed_out, the peak RSS (KiB) of
    its descendants and the killed pids."""
    # A child python reports the peak RSS of its own descendants (torchrun and the trainer) only.
    probe = ("import resource, subprocess, sys; log = open(sys.argv[1], 'wb'); "
             "rc = subprocess.call(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    before = locks(extensions)
    proc = subprocess.Popen([sys.executable, "-c", probe, str(log_path), *cmd], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        lines = out.decode().split()
        return {"rc": proc.returncode, "timed_out": False, "rss_kib": int(lines[-1]) if lines else 0, "killed": []}
    except subprocess.TimeoutExpired:
        killed = stop_everything_of(marker)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        stale = locks(extensions) - before
        for lock in stale:
            lock.unlink(missing_ok=True)
        return {"rc": None, "timed_out": True, "rss_kib": 0, "killed": killed,
                "stale_locks_removed": sorted(map(str, stale))}


def launch(run: Path, spec, timeout: float, extensions: Path | None) -> dict:
    """torchrun as the worker runs it, bounded by ``timeout`` seconds."""
    run.mkdir(parents=True, exist_ok=True)
    spec.write(run / "spec.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(29600 + os.getpid() % 300), "-m", "worker.training.train",
           "--spec", str(run / "spec.json")]
    extra = {"TORCH_EXTENSIONS_DIR": str(extensions)} if extensions is not None else {}
    return run_bounded(cmd, marker=str(run / "spec.json"), log_path=run / "training_log.txt", timeout=timeout,
                       cwd=REPO, env=child_env(**extra), extensions=extensions)


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

    naive = {"packing": False, "per_device_batch_size": 4, "grad_checkpoint": True, "attn_implementation": "sdpa"}
    # attention auto: flash-attention 2 where installed, else torch's varlen (worker/training/attention.py)
    tuned = {"packing": True, "per_device_batch_size": 1, "grad_checkpoint": True,
             "grad_checkpoint_vision": vision_ckpt, "torch_compile": compile_lm, "attn_implementation": "auto"}
    if not cpu:
        if importlib.util.find_spec("liger_kernel") is not None:
            tuned.update(liger_kernels=True, fused_cross_entropy=True)
    return {"naive": naive, "tuned": tuned}


def run_paths(specs: dict, n_samples: int, timeout: float, extensions: Path | None) -> dict[str, dict]:
    """Each path's figures, or why it failed: a failure is recorded and the next path still runs."""
    results = {}
    for name, (spec, over) in specs.items():
        run = Path(spec.output_dir)
        t0 = time.monotonic()
        done = launch(run, spec, timeout, extensions)
        log_path = run / "training_log.txt"
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if done["rc"] != 0:
            why = f"timed out after {timeout:.0f} s" if done["timed_out"] else f"exit {done['rc']}"
            print(f"{name}: FAILED ({why}); the last lines of its log:\n{log_text[-3000:]}", flush=True)
            results[name] = {"failed": why, "options": over, "killed": done["killed"],
                             "stale_locks_removed": done.get("stale_locks_removed", [])}
            continue
        results[name] = {**figures(run, done["rss_kib"], n_samples, time.monotonic() - t0), "options": over}
        print(f"{name}: done in {results[name]['wall_seconds_including_start']} s", flush=True)
    return results


def print_table(results: dict[str, dict]) -> None:
    cols = [("tokens_per_second", "tokens/s", "{:,.0f}"), ("samples_per_second", "samples/s", "{:.2f}"),
            ("mfu", "MFU", "{:.1%}"), ("packing_efficiency", "real/fed tokens", "{:.1%}"),
            ("pack_fill", "pack fill", "{:.1%}"),
            ("dataloader_wait_fraction", "data wait", "{:.1%}"), ("peak_memory_gib", "peak GiB", "{:.2f}"),
            ("steps", "steps", "{}")]
    print("| path | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in results.items():
        if r.get("failed"):
            print(f"| {name} | FAILED: {r['failed']} |" + " |" * (len(cols) - 1))
            continue
        cells = [fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")
    naive, tuned = results.get("naive", {}), results.get("tuned", {})
    if naive.get("tokens_per_second") and tuned.get("tokens_per_second"):
        print(f"tuned / naive tokens/s: {tuned['tokens_per_second'] / naive['tokens_per_second']:.2f}x")


def run_anchor(path: Path, out: Path, cpu: bool, timeout: float, peak: float, extensions: Path | None) -> dict:
    """The shared baseline in the same call, as the common reference: a copy of the script under
    ``out`` (so that what it starts is found by its path), its own JSON figures (on the CPU its
    TINY=1 smoke shapes), and MFU over the peak this benchmark measured."""
    import shutil

    work = out / "anchor"
    work.mkdir(parents=True, exist_ok=True)
    script = work / path.name
    shutil.copy(path, script)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29733", str(script)]
    extra = {"TINY": "1"} if cpu else {}
    if extensions is not None:
        extra["TORCH_EXTENSIONS_DIR"] = str(extensions)
    t0 = time.monotonic()
    done = run_bounded(cmd, marker=str(script), log_path=work / "anchor_log.txt", timeout=timeout, cwd=work,
                       env=child_env(**extra), extensions=extensions)
    text = (work / "anchor_log.txt").read_text(errors="replace")
    found = [json.loads(line) for line in text.splitlines() if line.startswith("{") and '"tokens_per_s"' in line]
    if done["rc"] != 0 or not found:
        why = "timed out" if done["timed_out"] else f"exit {done['rc']}"
        print(f"anchor: FAILED ({why}); the last lines of its log:\n{text[-3000:]}", flush=True)
        return {"failed": why, **done}
    a = found[-1]
    return {"tokens_per_second": a["tokens_per_s"], "samples_per_second": a["bsz"] / a["step_s"],
            "mfu": a["model_tflops"] * 1e12 / peak, "peak_memory_gib": a["peak_mem_GiB"],
            "packing_efficiency": 1.0, "steps": None, "anchor": a,
            "wall_seconds_including_start": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--samples", type=int, default=None, help="samples in the epoch (default: 48 CPU, 160 GPU)")
    ap.add_argument("--only", choices=["naive", "tuned"], default=None)
    ap.add_argument("--no-vision-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="tuned: torch.compile the language model")
    ap.add_argument("--anchor", type=Path, default=None, help="also run shared/baselines/gpu_trainer_anchor.py")
    ap.add_argument("--timeout", type=float, default=1800,
                    help="seconds per path; past it everything the path started is killed and the next path runs")
    ap.add_argument("--torch-extensions", type=Path, default=None,
                    help="a private TORCH_EXTENSIONS_DIR for the launched trainers; the compile locks a killed "
                    "path leaves there are removed")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the JSON figures to this file")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from backend.core.presets import resolve
    from backend.core.spec import TrainingSpec
    from worker.training.speed import measured_peak_flops

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
    torch.set_num_threads(max(os.cpu_count() or 1, 1))
    device = torch.device("cpu" if cpu or not torch.cuda.is_available() else "cuda")
    peak = measured_peak_flops(device, torch.float32 if device.type == "cpu" else torch.bfloat16)
    print(f"matmul peak measured here: {peak / 1e12:.3g} TFLOP/s ({device.type})", flush=True)
    if args.torch_extensions is not None:
        args.torch_extensions.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    if args.anchor:  # first: the reference the paths are compared with
        results["anchor"] = run_anchor(args.anchor.resolve(), args.out, cpu, args.timeout, peak, args.torch_extensions)
        print(f"anchor: {results['anchor'].get('failed') or 'done'}", flush=True)
    specs = {}
    for name, over in configs(cpu, not args.no_vision_checkpointing, args.compile).items():
        if args.only and name != args.only:
            continue
        specs[name] = (TrainingSpec(job_id=0, model_path=str(model), template="internlm2-chat", meta_path=str(meta),
                                    output_dir=str(args.out / name), hyper=resolve("2b-full", {**base, **over})), over)
    results.update(run_paths(specs, n, args.timeout, args.torch_extensions))
    print_table(results)
    report = {"device": "cpu" if cpu else device_name(), "date": time.strftime("%Y-%m-%d"), "data_path": rate,
              "peak_tflops_measured": peak / 1e12, "results": results}
    print(json.dumps(report))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 1 if any(r.get("failed") for r in results.values()) else 0


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    sys.exit(main())
