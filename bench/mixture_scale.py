"""The seed's mixture at its real size: index, start, memory, preview and validation figures.

    python bench/mixture_scale.py [--fraction 0.05] [--dir DIR] [--keep] [--skip-train]

Generates a synthetic copy of ``internvl_1_2_finetune.json`` (the nine released datasets at their
line counts times ``--fraction``: captions of 100-400 words, 2-8-turn dialogues, short chart /
document QA, geometry QA, OCR transcriptions, some multi-image and pure-text lines, over a pool
of images of the released sizes), a tokenizer trained on its words, and then prints:

- the index build (first start): CPU seconds and wall, lines per CPU second, and the same for
  the reference path (one :func:`tokenize_sample` per record, as the index was built before)
  on a sample of the lines;
- a cached start: the index of the same data opened again (nothing tokenized);
- RSS of a process holding the dataset, of each of 2 dataloader workers at the start and the
  end of an epoch of reads (the dataset part: RSS after minus before);
- time to step 1 of a real 1-process training run on the mixture (tiny model, CPU), first and
  cached (``--skip-train`` leaves it out);
- preview latency of the last line of the largest file, through the cached offsets;
- ``validate --model`` lines per CPU second on the largest file.

Figures are printed, never asserted. On a shared machine wall times follow the load (printed
first); CPU seconds do not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.validate import contention  # noqa: E402  (how shared the machine is; one definition)

#: the seed's internvl_1_2_finetune.json: name -> (lines, kind)
SEED = {
    "sharegpt4v_instruct_gpt4-vision_cap100k": (102_025, "caption"),
    "llava_instruct_150k_zh": (157_712, "dialogue_zh"),
    "sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k": (665_058, "mix"),
    "dvqa_train_200k": (200_000, "chart_qa"),
    "chartqa_train_18k": (18_317, "chart_qa"),
    "ai2d_train_12k": (12_413, "chart_qa"),
    "docvqa_train_10k": (10_211, "doc_qa"),
    "geoqa+": (72_318, "geo"),
    "synthdog_en": (29_765, "ocr"),
}
WORDS = ("the a of and to in is on with for at by an image shows picture left right top bottom man woman "
         "child dog cat car bus red blue green yellow white black large small two three several table chart "
         "value year bar line axis title label text document page form number total percent figure angle "
         "triangle circle point length area answer question describe detail scene background foreground "
         "building street tree sky water people standing sitting holding wearing looking next behind front "
         "above below between color shape pattern light dark bright wooden metal glass plastic paper").split()
ZH = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经"
#: (width, height) of the released images: COCO-like photos, charts, documents, SAM, synthdog
SIZES = [(640, 480), (640, 427), (500, 375), (1024, 768), (448, 448), (800, 600), (1700, 2200), (850, 1100),
         (1500, 1000), (2250, 1500), (800, 800), (1280, 720), (448, 1344)]


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi))).capitalize() + "."


def zh(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choices(ZH, k=rng.randint(lo, hi))) + "。"


def record(kind: str, i: int, rng: random.Random, images: list[str]) -> dict:
    """One synthetic line of a released dataset's kind."""
    if kind == "mix":
        kind = rng.choices(["caption", "dialogue", "short_qa", "text", "multi"], [0.25, 0.45, 0.2, 0.07, 0.03])[0]
    rec: dict = {"id": f"{kind}-{i}"}
    img = [images[rng.randrange(len(images))]]
    if kind == "caption":
        turns = [("Describe this image in detail.", words(rng, 100, 400))]
    elif kind in ("dialogue", "dialogue_zh"):
        say = zh if kind == "dialogue_zh" else words
        turns = [(say(rng, 5, 25), say(rng, 10, 80)) for _ in range(rng.randint(1, 4))]
    elif kind in ("short_qa", "chart_qa", "doc_qa"):
        turns = [(words(rng, 6, 20) + " Answer the question using a single word or phrase.", words(rng, 1, 4))]
    elif kind == "geo":
        turns = [(words(rng, 20, 60), words(rng, 30, 120))]
    elif kind == "ocr":
        turns = [("Read all the text in the image.", words(rng, 60, 300))]
    elif kind == "text":
        img = []
        turns = [(words(rng, 10, 60), words(rng, 40, 300)) for _ in range(rng.randint(1, 3))]
    else:  # multi-image
        img = [images[rng.randrange(len(images))] for _ in range(rng.randint(2, 3))]
        turns = [("".join("<image>\n" for _ in img) + words(rng, 8, 20), words(rng, 20, 80))]
    convs = []
    for q, a in turns:
        convs += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    if len(img) == 1:
        rec["image"] = img[0]
        convs[0]["value"] = "<image>\n" + convs[0]["value"]
    elif img:
        rec["image"] = img
    rec["conversations"] = convs
    return rec


def generate(root: Path, fraction: float, seed: int = 0) -> dict[str, int]:
    """The synthetic mixture under ``root`` (images/, one JSONL per dataset, meta.json); line counts."""
    from PIL import Image

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for k in range(64):
        w, h = SIZES[k % len(SIZES)]
        name = f"images/{k:03d}.jpg"
        Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3))).save(root / name, quality=60)
        images.append(name)
    meta, counts = {}, {}
    for name, (lines, kind) in SEED.items():
        n = max(1, round(lines * fraction))
        with open(root / f"{name}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps(record(kind, i, rng, images), ensure_ascii=False) + "\n")
        meta[name] = {"root": str(root), "annotation": str(root / f"{name}.jsonl"), "data_augment": False,
                      "repeat_time": 1, "length": n}
        counts[name] = n
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return counts


def build_tokenizer(path: Path):
    """A byte-level BPE of 8k tokens trained on the mixture's words (about 1.3 tokens per word,
    as real tokenizers on English) with the InternVL special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from backend.core.templates import INTERNVL_SYSTEM_MESSAGE

    specials = ["<unk>", "<s>", "</s>", "<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = random.Random(1)
    corpus = [words(rng, 20, 60) for _ in range(2000)] + [zh(rng, 20, 60) for _ in range(500)]
    tok.train_from_iterator(corpus + [INTERNVL_SYSTEM_MESSAGE] * 50, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>",
                                   pad_token="</s>", additional_special_tokens=specials[3:])
    fast.save_pretrained(path)
    return fast


def cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def settings(tokens_per_tile: int = 256) -> dict:
    return dict(max_seq_length=4096, max_dynamic_patch=6, tokens_per_tile=tokens_per_tile)


def phase_build(root: Path, tok_dir: Path, cache: Path) -> dict:
    """Child process: the first start (every index built) then a cached start, and the memory
    of a rank and of 2 dataloader workers reading every record of the epoch."""
    from transformers import AutoTokenizer

    from backend.core.templates import get_template
    from worker.training.data import SupervisedDataset

    tok = AutoTokenizer.from_pretrained(tok_dir)
    tpl = get_template("internlm2-chat")
    c0, t0 = cpu(), time.perf_counter()
    ds = SupervisedDataset(root / "meta.json", tok, tpl, **settings(), cache_dir=cache,
                           progress=lambda m: print(m, file=sys.stderr, flush=True))
    build = {"cpu_s": cpu() - c0, "wall_s": time.perf_counter() - t0, "lines": sum(ds.lengths.values()),
             "kept": len(ds), "tokenized": ds.tokenized,
             "workers": max((r["workers"] or 1 for r in ds.index_report), default=1)}
    del ds
    before = rss_mb()
    c0, t0 = cpu(), time.perf_counter()
    ds = SupervisedDataset(root / "meta.json", tok, tpl, **settings(), cache_dir=cache)
    cached = {"cpu_s": cpu() - c0, "wall_s": time.perf_counter() - t0, "tokenized": ds.tokenized,
              "rss_delta_mb": rss_mb() - before}
    return {"build": build, "cached": cached, "memory": epoch_memory(ds)}


class _Records:
    """The epoch's reads without the pixels: each item parses its record from its line (what
    a dataloader worker does per sample, before decoding images) and reports the worker's RSS."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, k: int):
        rec = self.ds.record(k)
        return len(rec["conversations"]), rss_mb(), os.getpid()


def epoch_memory(ds) -> dict:
    from torch.utils.data import DataLoader

    rank_start = rss_mb()
    seen: dict[int, list[float]] = {}
    for _, rss, pid in DataLoader(_Records(ds), batch_size=None, num_workers=2, shuffle=True):
        seen.setdefault(int(pid), []).append(float(rss))
    workers = {pid: {"start_mb": v[0], "end_mb": v[-1], "samples": len(v)} for pid, v in seen.items()}
    return {"rank_start_mb": rank_start, "rank_end_mb": rss_mb(), "workers": list(workers.values())}


def phase_reference(root: Path, tok_dir: Path, n: int) -> dict:
    """Child process: the index as it was built before, on a sample of ``n`` lines of every file
    (all records read as dicts, then Image.open + tokenize_sample each), and the memory of the
    records as dicts."""
    from PIL import Image
    from transformers import AutoTokenizer

    from backend.core.samples import image_paths, tokenize_sample
    from backend.core.templates import get_template
    from backend.core.tiling import max_patches_per_image, plan_tiles

    tok = AutoTokenizer.from_pretrained(tok_dir)
    tpl = get_template("internlm2-chat")
    before = rss_mb()
    records = []
    for name in SEED:
        with open(root / f"{name}.jsonl", encoding="utf-8-sig") as f:
            records += [json.loads(line) for line in f if line.strip()]
    dict_mb = rss_mb() - before
    sample = records[:: max(1, len(records) // n)][:n]
    c0 = cpu()
    for rec in sample:
        paths = image_paths(rec)
        tiles = []
        for rel in paths:
            with Image.open(root / rel) as im:
                w, h = im.size
            tiles.append(plan_tiles(w, h, max_num=max_patches_per_image(6, len(paths))).num_tiles)
        tokenize_sample(rec, tpl, tok, tiles)
    ref = (cpu() - c0) / len(sample)
    # the same lines through the compact index's path (header reads + batched counting)
    from backend.core.data_index import _ImageSizes
    from backend.core.samples import count_samples

    c0 = cpu()
    sizes = _ImageSizes(root)
    for k in range(0, len(sample), 256):
        items = []
        for rec in sample[k:k + 256]:
            paths = image_paths(rec)
            items.append((rec, [plan_tiles(*sizes.size(rel), max_num=max_patches_per_image(6, len(paths))).num_tiles
                                for rel in paths]))
        count_samples(items, tpl, tok, 256, limit=4096)
    return {"records": len(records), "dict_mb": dict_mb, "sample": len(sample), "cpu_s_per_line": ref,
            "new_cpu_s_per_line": (cpu() - c0) / len(sample)}


def phase_preview(root: Path, cache: Path) -> dict:
    from backend.core.data_index import file_lines
    from backend.core.preview import read_record

    big = max(root.glob("*.jsonl"), key=lambda p: p.stat().st_size)
    n = len(file_lines(big, cache).starts)
    t0 = time.perf_counter()
    read_record(big, n, cache_dir=cache)
    first = time.perf_counter() - t0
    times = []
    for line in (n, 1, n // 2, n - 1, n):
        t0 = time.perf_counter()
        read_record(big, line, cache_dir=cache)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    read_record(big, n)  # no cache: the file is scanned, as every preview did before
    scan = time.perf_counter() - t0
    return {"file": big.name, "mb": big.stat().st_size / 2**20, "lines": n, "first_ms": first * 1000,
            "cached_ms": 1000 * sorted(times)[len(times) // 2], "uncached_scan_ms": scan * 1000}


def phase_validate(root: Path, model_dir: Path, lines: int) -> dict:
    from backend.core.model_card import read_card
    from backend.core.model_folder import load_tokenizer
    from backend.core.validation import settings_for, validate_annotation

    big = max(root.glob("*.jsonl"), key=lambda p: p.stat().st_size)
    part = root / "validate-part.jsonl"
    with open(big) as src, open(part, "w") as dst:
        for k, line in enumerate(src):
            if k >= lines:
                break
            dst.write(line)
    tok = load_tokenizer(model_dir)
    s = settings_for(read_card(model_dir), max_seq_length=4096)
    c0, t0 = cpu(), time.perf_counter()
    report = validate_annotation(part, root, settings=s, tokenizer=tok, workers=1)
    c, w = cpu() - c0, time.perf_counter() - t0
    return {"lines": report.lines, "ok": report.ok, "cpu_s": c, "wall_s": w, "lines_per_cpu_s": report.lines / c}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phase_train(root: Path, model: Path, run: Path, cache: Path) -> dict:
    """A real 1-process training run (the demo model, CPU, 1 step) on the mixture: seconds from
    the trainer's start to its 'step 1' line."""
    from backend.core.spec import Hyperparameters, TrainingSpec

    run.mkdir(parents=True, exist_ok=True)
    h = Hyperparameters(nproc_per_node=1, per_device_batch_size=1, max_dynamic_patch=6, max_seq_length=4096,
                        max_steps=1, zero_stage=0, save_steps=0, logging_steps=1)
    TrainingSpec(job_id=1, model_path=str(model), template="internlm2-chat", meta_path=str(root / "meta.json"),
                 output_dir=str(run), hyper=h).write(run / "spec.json")
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLSTUDIO_INDEX_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "1",
                             "--master_port", str(free_port()), "-m", "worker.training.train", "--spec", str(run / "spec.json"),
                             "--in-place"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    step1 = None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if step1 is None and line.startswith("step 1/"):
            step1 = time.perf_counter() - t0
    proc.wait()
    index_lines = [x.strip() for x in lines if x.startswith("index ")]
    return {"rc": proc.returncode, "step1_s": step1, "total_s": time.perf_counter() - t0,
            "index": index_lines[:2], "tail": "".join(lines[-3:]) if proc.returncode else ""}


def child(phase: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", phase, *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode:
        raise SystemExit(f"phase {phase} failed:\n{out.stderr[-3000:]}")
    sys.stderr.write("".join(x + "\n" for x in out.stderr.splitlines() if x.startswith("indexing")))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fraction", type=float, default=0.05, help="of the seed's line counts (1.0: 1,267,819 lines)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--reference-lines", type=int, default=2000)
    ap.add_argument("--validate-lines", type=int, default=20000)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        fn = {"build": phase_build, "reference": phase_reference, "preview": phase_preview,
              "validate": phase_validate}[a.phase]
        conv = [Path(x) if not x.isdigit() else int(x) for x in a.args]
        print(json.dumps(fn(*conv)))
        return
    import tempfile

    scratch = a.dir or Path(tempfile.mkdtemp(prefix="vlstudio-mixture-"))
    scratch.mkdir(parents=True, exist_ok=True)
    root, cache, tok_dir = scratch / "data", scratch / "cache", scratch / "tokenizer"
    try:
        print(f"cpu cores: {os.cpu_count()}; load: {contention():.1f} s of wall per CPU-s of a spin loop (1.0 idle)")
        t0 = time.perf_counter()
        counts = generate(root, a.fraction)
        total = sum(counts.values())
        mb = sum((root / f"{n}.jsonl").stat().st_size for n in SEED) / 2**20
        print(f"mixture: {total:,} lines ({a.fraction:g} of the seed's 1,267,819), {mb:,.0f} MB of JSONL, "
              f"generated in {time.perf_counter() - t0:.0f} s")
        build_tokenizer(tok_dir)
        (tok_dir / "config.json").write_text(json.dumps({"template": "internlm2-chat", "max_dynamic_patch": 6}))
        ref = child("reference", str(root), str(tok_dir), str(a.reference_lines))
        print(f"same {ref['sample']:,} sampled lines, same process: reference {ref['cpu_s_per_line'] * 1000:.2f} ms CPU "
              f"a line, compact index's path {ref['new_cpu_s_per_line'] * 1000:.2f} ms "
              f"({ref['new_cpu_s_per_line'] / ref['cpu_s_per_line']:.0%})")
        print(f"before (reference path, {ref['sample']:,} lines sampled): {ref['cpu_s_per_line'] * 1000:.2f} ms CPU "
              f"a line -> {ref['cpu_s_per_line'] * total:,.0f} CPU-s per rank per start for this mixture; records as "
              f"dicts: {ref['dict_mb']:,.0f} MB ({ref['dict_mb'] * 1024 / total:.2f} KB a line)")
        b = child("build", str(root), str(tok_dir), str(cache))
        bb, cc, mm = b["build"], b["cached"], b["memory"]
        print(f"index build (first start, up to {bb['workers']} processes): {bb['cpu_s']:,.1f} CPU-s, "
              f"{bb['wall_s']:,.1f} s wall, "
              f"{bb['lines'] / bb['cpu_s']:,.0f} lines/CPU-s ({bb['cpu_s'] / bb['lines'] * 1000:.2f} ms a line; "
              f"{bb['cpu_s'] / (ref['cpu_s_per_line'] * bb['lines']):.0%} of the reference's CPU), "
              f"{bb['kept']:,} samples kept")
        print(f"cached start: {cc['cpu_s']:.2f} CPU-s, {cc['wall_s']:.2f} s wall, {cc['tokenized']} lines tokenized, "
              f"RSS +{cc['rss_delta_mb']:.1f} MB")
        print(f"epoch of record reads, 2 dataloader workers: rank RSS {mm['rank_start_mb']:.0f} -> "
              f"{mm['rank_end_mb']:.0f} MB; workers " + ", ".join(
                  f"{w['start_mb']:.0f} -> {w['end_mb']:.0f} MB ({w['samples']:,} samples)" for w in mm["workers"]))
        pv = child("preview", str(root), str(cache))
        print(f"preview of the last line of {pv['file']} ({pv['mb']:,.0f} MB, {pv['lines']:,} lines): "
              f"{pv['cached_ms']:.2f} ms (first, offsets from the cache: {pv['first_ms']:.1f} ms; without the "
              f"cache, a scan of the file: {pv['uncached_scan_ms']:,.0f} ms)")
        va = child("validate", str(root), str(tok_dir), str(a.validate_lines))
        print(f"validate --model (1 process, {va['lines']:,} lines of the largest file): "
              f"{va['lines_per_cpu_s']:,.0f} lines/CPU-s ({va['cpu_s']:.1f} CPU-s, {va['wall_s']:.1f} s wall)")
        if not a.skip_train:
            from worker.demo_model import build_demo_model

            model = build_demo_model(scratch / "model")
            for label in ("first start (index built by the trainer)", "cached start"):
                tr = phase_train(root, model, scratch / "run", cache / "trainer")
                if tr["rc"]:
                    print(f"training run FAILED ({label}): {tr['tail']}")
                    break
                print(f"time to step 1, 1 rank, demo model ({label}): {tr['step1_s']:.1f} s; {tr['index'][:1]}")
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
