"""Tiny benchmarks in each release layout of InternVL's evaluation guide (a handful of samples,
generated images), for tests/eval/test_benchmarks.py and tools/make_benchmark_reference.py
(which runs the guide's scripts on the very same files). Deterministic."""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from pathlib import Path

from PIL import Image

MME_TASKS = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
             "OCR", "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SHORT = "Answer the question using a single word or phrase."
#: the benchmark (catalog name) written for each layout, with the folder name of the guide
LAYOUTS = {"textvqa_val": "textvqa", "docvqa_val": "docvqa", "ai2d_test": "ai2diagram",
           "mmbench_dev_en": "mmbench", "scienceqa_test": "scienceqa", "seed_image": "SEED", "pope": "pope",
           "mme": "mme", "ocrbench": "OCRBench"}


def image(seed: int, fmt: str = "PNG") -> bytes:
    rng = random.Random(seed)
    w, h = rng.choice([(64, 48), (40, 90), (120, 30), (50, 50)])
    im = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    im.paste(tuple(rng.randrange(256) for _ in range(3)), (w // 4, h // 4, w // 2, h // 2))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)


def _img(path: Path, seed: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image(seed, fmt))


def write_textvqa(d: Path) -> None:
    anns, rows = [], []
    for i in range(3):
        _img(d / "train_images" / f"t{i}.jpg", i, "JPEG")
        rows.append({"image": f"data/textvqa/train_images/t{i}.jpg", "question": f"what is written on sign {i}?",
                     "question_id": 100 + i, "answer": "ignored"})
        anns.append({"question_id": 100 + i, "answers": [{"answer": a} for a in ["stop"] * 6 + ["Stop!"] * 4]})
    _jsonl(d / "textvqa_val.jsonl", rows)
    (d / "textvqa_val_annotations.json").write_text(json.dumps({"annotations": anns}))


def write_docvqa(d: Path) -> None:
    _jsonl(d / "val.jsonl", [{"image": f"data/docvqa/val/documents/d{i}.png", "question": f"What is the total ({i})?",
                              "question_id": 7 + i, "answer": ["$1,250.00", "1250"]} for i in range(3)])
    for i in range(3):
        _img(d / "val" / "documents" / f"d{i}.png", 10 + i)


def write_ai2d(d: Path) -> None:
    rows = []
    for i in range(3):
        _img(d / "AI2D_TEST" / f"{i}.png", 20 + i)
        q = (f"Which part is labelled {i}?\nA. leaf\nB. stem\nC. root\nD. flower\n"
             "Answer with the option's letter from the given choices directly.")
        rows.append({"image": f"data/ai2diagram/AI2D_TEST/{i}.png", "question": q, "question_id": i, "answer": "B"})
    _jsonl(d / "test_vlmevalkit.jsonl", rows)


def write_mmbench(d: Path) -> None:
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source", "l2-category",
              "comment", "split", "image"]
    rows = []
    texts = ["a cat", "a dog", "a bird"]
    for q in range(2):
        img = base64.b64encode(image(30 + q, "JPEG")).decode()
        for r in range(3):  # the question and two rotations (circular evaluation)
            rot = texts[r:] + texts[:r]
            hint = "Look at the animal." if q == 0 else ""
            rows.append([q + r * 1_000_000, f"What animal is this ({q})?", hint, *rot, "", "ABC"[rot.index("a dog")],
                         "recognition", "src", "perception", "", "dev", img])
    _tsv(d / "mmbench_dev_20230712.tsv", header, rows)


def write_scienceqa(d: Path) -> None:
    rows = []
    for i in range(3):
        _img(d / "images" / "test" / str(i) / "image.png", 40 + i)
        rows.append({"image": f"data/scienceqa/images/test/{i}/image.png", "hint": "A hint." if i != 1 else "",
                     "question": ("  " if i == 1 else "") + f"Which is a mammal? ({i})", "choices": ["frog", "whale", "shark"][: 2 + i % 2],
                     "answer": 1})
    _jsonl(d / "scienceqa_test_img.jsonl", rows)


def write_seed(d: Path) -> None:
    rows = []
    for i in range(3):
        _img(d / "SEED-Bench-image" / f"s{i}.jpg", 50 + i, "JPEG")
        text = (f"How many cups are there ({i})?\nA. one\nB. two\nC. three\nD. four\n"
                "Answer with the option's letter from the given choices directly.")
        rows.append({"question_id": f"{i}_0", "image": f"SEED-Bench-image/s{i}.jpg", "text": text, "answer": "C",
                     "question_type_id": 5})
    _jsonl(d / "seed.jsonl", rows)


def write_pope(d: Path) -> None:
    questions = []
    qid = 1
    for cat in ("adversarial", "popular", "random"):
        labels = []
        for i in range(2):
            name = f"COCO_val2014_{cat}{i}.jpg"
            _img(d / "val2014" / name, 60 + qid, "JPEG")
            questions.append({"question_id": qid, "image": name, "category": cat,
                              "text": f"Is there a dog in the image ({qid})?\n{SHORT}"})
            labels.append({"question_id": i + 1, "image": name, "text": "Is there a dog in the image?",
                           "label": "yes" if i == 0 else "no"})
            qid += 1
        _jsonl(d / "coco" / f"coco_pope_{cat}.json", labels)
    _jsonl(d / "llava_pope_test.jsonl", questions)


def write_mme(d: Path) -> None:
    root = d / "MME_Benchmark_release_version"
    for k, task in enumerate(MME_TASKS):
        nested = k % 2 == 0  # both layouts of the release: images/ + questions_answers_YN/, or side by side
        img_dir, q_dir = (root / task / "images", root / task / "questions_answers_YN") if nested \
            else (root / task, root / task)
        _img(img_dir / f"{task}_0.png", 70 + k)
        q_dir.mkdir(parents=True, exist_ok=True)
        (q_dir / f"{task}_0.txt").write_text(f"Is this about {task}? Please answer yes or no.\tYes\n"
                                             f"Is this a pizza? Please answer yes or no.\tNo\n", encoding="utf-8")


def write_ocrbench(d: Path) -> None:
    cats = ["Regular Text Recognition", "Scene Text-centric VQA", "Handwritten Mathematical Expression Recognition"]
    rows = [[i, base64.b64encode(image(90 + i)).decode(), f"what is written in the image ({i})?",
             repr(["STOP", "stop sign"]) if i < 2 else repr(["x ^ { 2 }"]), cats[i]] for i in range(3)]
    _tsv(d / "OCRBench.tsv", ["index", "image", "question", "answer", "category"], rows)


WRITERS = {"textvqa_val": write_textvqa, "docvqa_val": write_docvqa, "ai2d_test": write_ai2d,
           "mmbench_dev_en": write_mmbench, "scienceqa_test": write_scienceqa, "seed_image": write_seed,
           "pope": write_pope, "mme": write_mme, "ocrbench": write_ocrbench}


def write_all(base: Path) -> dict[str, Path]:
    """Every layout under ``base/data/<guide folder>``; returns benchmark name -> folder."""
    out = {}
    for name, writer in WRITERS.items():
        folder = base / "data" / LAYOUTS[name]
        writer(folder)
        out[name] = folder
    return out
