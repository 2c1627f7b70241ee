"""Benchmark of dataset validation at the scale of the released data.

    python bench/validate.py [--lines 200000] [--images 20000] [--workers N] [--dir DIR]

Generates a dataset (``--lines`` JSONL lines referencing ``--images`` image files: mostly
single-image samples, some multi-image and text-only, 1-3 rounds), then times, each phase in
a fresh subprocess so its peak memory is its own:

- ``text``: JSON, schema, roles, tags, ids and duplicates, no image access (lines/s);
- ``images``: one line per image file, every file checked once: path, header, size and
  integrity (images/s);
- ``full``: everything on the big file, with token counts from a small local BPE tokenizer
  (lines/s; real tokenizers have bigger vocabularies and cost more per line);
- ``text`` again on a quarter of the lines, to show how peak memory follows the line count;
- ``text`` and ``images`` in one process (``workers=1``): a lower bound for any machine.

Peak memory is the maximum resident set size of the main process and of the largest
worker. Images are freshly written, so they are read from the page cache (warm). On a shared
machine wall-clock rates drop with the load (printed first); items per CPU second do not.
Figures are printed, never asserted: benchmarks do not gate CI.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTIONS = ["What is shown in this image?", "Describe the chart in detail.", "What is the title of the document?",
             "How many objects are there?", "What colour is the largest shape? Answer with one word.",
             "Read the text in the picture.", "请描述这张图片。", "What is the value of the second bar?"]
ANSWERS = ["A red circle next to a blue square on a white background.", "The chart shows revenue by year.",
           "Annual report 2023", "There are four objects.", "Red.", "OPEN 24 HOURS", "这是一张图表。", "42"]


def make_templates(rng: random.Random) -> list[tuple[str, bytes]]:
    from PIL import Image, ImageDraw

    out = []
    for k in range(48):
        w, h = rng.choice([(640, 480), (1024, 768), (448, 448), (800, 1200), (1280, 720), (336, 512), (1600, 400)])
        img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = rng.randrange(w), rng.randrange(h)
            d.rectangle((x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)),
                        fill=tuple(rng.randrange(256) for _ in range(3)))
        fmt = "JPEG" if k % 3 else "PNG"
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=85)
        out.append(("jpg" if fmt == "JPEG" else "png", buf.getvalue()))
    return out


def generate(root: Path, lines: int, images: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    templates = make_templates(rng)
    names = []
    for i in range(images):
        ext, data = templates[i % len(templates)]
        name = f"images/{i // 1000:03d}/{i:06d}.{ext}"
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(data)
        names.append(name)
    with open(root / "images.jsonl", "w") as f:
        for i, name in enumerate(names):
            f.write(json.dumps({"id": i, "image": name, "conversations": [
                {"from": "human", "value": "<image>\n" + QUESTIONS[i % 8]}, {"from": "gpt", "value": ANSWERS[i % 8]}]})
                + "\n")
    with open(root / "train.jsonl", "w") as f:
        for i in range(lines):
            kind = rng.random()
            convs = []
            for r in range(rng.choice((1, 1, 2, 3))):
                q = rng.choice(QUESTIONS) + f" (#{i}.{r})"
                convs += [{"from": "human", "value": q}, {"from": "gpt", "value": rng.choice(ANSWERS)}]
            rec: dict = {"id": f"sample-{i}"}
            if kind < 0.10:
                pass  # text only
            elif kind < 0.15:
                n = rng.choice((2, 3))
                rec["image"] = [names[rng.randrange(images)] for _ in range(n)]
                convs[0]["value"] = "<image>\n" * n + convs[0]["value"]
            else:
                rec["image"] = names[i % images]
                convs[0]["value"] = "<image>\n" + convs[0]["value"]
            rec["conversations"] = convs
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def build_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<unk>", "<s>", "</s>", "<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Real tokenizers know the InternVL system message (Chinese): so must this one, or its
    # ~60 characters become ~180 byte-level tokens and dominate the timing.
    from backend.core.templates import INTERNVL_SYSTEM_MESSAGE

    tok.train_from_iterator((QUESTIONS + ANSWERS + [INTERNVL_SYSTEM_MESSAGE]) * 50, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "config.json").write_text(json.dumps({"template": "internlm2-chat", "max_dynamic_patch": 12}))


def run_phase(phase: str, root: Path, annotation: str, workers: int | None, model: Path | None) -> dict:
    """Runs in the child process: one validation, its figures as a dict."""
    from backend.core.model_card import read_card
    from backend.core.model_folder import load_tokenizer
    from backend.core.validation import ValidationSettings, settings_for, validate_annotation

    tokenizer = None
    settings = ValidationSettings(check_images=phase != "text")
    if model is not None:
        tokenizer = load_tokenizer(model)
        settings = settings_for(read_card(model), max_seq_length=8192, check_images=phase != "text")
    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    report = validate_annotation(root / annotation, root, settings=settings, tokenizer=tokenizer,
                                 workers=workers)
    dt = time.perf_counter() - t0
    return {"phase": phase, "seconds": round(dt, 3), "cpu_seconds": round(cpu() - c0, 3),
            "lines": report.lines, "images": report.images,
            "ok": report.ok, "issues": {f"{s}:{c}": n for (s, c), n in report.counts.items()},
            "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def spawn(phase: str, root: Path, annotation: str, workers: int | None, model: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--dir", str(root), "--annotation", annotation]
    if workers:
        cmd += ["--workers", str(workers)]
    if model is not None:
        cmd += ["--model", str(model)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def contention() -> float:
    """Wall seconds per CPU second of a busy loop: how shared the machine is right now."""
    t, c = time.perf_counter(), time.process_time()
    x = 0
    while time.process_time() - c < 0.5:
        x += 1
    return (time.perf_counter() - t) / 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=None, help="default: all cores")
    ap.add_argument("--dir", type=Path, default=None, help="reuse or keep the generated data here")
    ap.add_argument("--skip-full", action="store_true", help="skip the (slow) phase with token counts")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--annotation", default="train.jsonl", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.dir, args.annotation, args.workers, args.model)))
        return
    tmp = None
    root = args.dir
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="vlstudio-bench-")
        root = Path(tmp.name)
    if not (root / "train.jsonl").exists():
        t0 = time.perf_counter()
        generate(root, args.lines, args.images)
        print(f"generated {args.lines:,} lines, {args.images:,} images in {time.perf_counter() - t0:.1f} s "
              f"({sum(f.stat().st_size for f in (root / 'images').rglob('*')) / 2**20:,.0f} MB of images)")
    with open(root / "train.jsonl") as src, open(root / "quarter.jsonl", "w") as dst:
        for k, line in enumerate(src):
            if k >= args.lines // 4:
                break
            dst.write(line)
    model = root / "model"
    build_tokenizer(model)
    print(f"cpu cores: {os.cpu_count()}; machine load: {contention():.1f} s of wall time per CPU second of a "
          "spin loop (1.0 on an idle machine)")
    plan = [("text + schema checks", "text", "train.jsonl", args.workers),
            ("text + schema checks, 1/4 of the lines", "text", "quarter.jsonl", args.workers),
            ("text + schema checks, one process", "text", "train.jsonl", 1),
            ("image checks (header + integrity)", "images", "images.jsonl", args.workers),
            ("image checks, one process", "images", "images.jsonl", 1)]
    if not args.skip_full:
        plan.append(("full (text, images, tokens)", "full", "train.jsonl", args.workers))
    print("wall: elapsed; cpu: CPU seconds of all processes (main + workers); /cpu-s: items per CPU second, the\n"
          "figure that does not depend on what else runs on the machine")
    for name, phase, annotation, workers in plan:
        r = spawn(phase, root, annotation, workers, model if phase == "full" else None)
        unit, n = ("images", r["images"]) if phase == "images" else ("lines", r["lines"])
        print(f"{name:40} {r['lines']:>8,} lines  wall {r['seconds']:7.2f} s {n / r['seconds']:>9,.0f} {unit}/s  "
              f"cpu {r['cpu_seconds']:7.2f} s {n / max(r['cpu_seconds'], 1e-9):>9,.0f} {unit}/cpu-s  "
              f"peak RSS main {r['rss_main_mb']:4.0f} MB, worker {r['rss_worker_mb']:4.0f} MB  ok={r['ok']}",
              flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
