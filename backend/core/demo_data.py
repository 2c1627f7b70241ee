"""The demo dataset: one large solid coloured shape on a white background with a question
about it, in the seed's JSONL format. Deterministic for a seed.

By default every question asks for the colour (four colours: chance is 25%). The signal is
deliberately easy so that the tiny demo model goes from chance to near-perfect in a few
minutes of CPU fine-tuning: the demo shows that fine-tuning and evaluation work end to end.
Questions about the shape (``kinds=("colour", "shape")``) are available but the tiny model
learns them far more slowly (about 50% after 400 steps, see docs/evaluation.md).
Positions and sizes are jittered, so every image differs and a held-out split holds images
the model never saw.
"""

from __future__ import annotations

import io
import json
import math
import random
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

from backend.core import deadline

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle", "star")
QUESTIONS = {
    "colour": "What colour is the shape? Answer with one word.",
    "shape": "What shape is in the picture? Answer with one word.",
}
#: exact match at chance (four colours, four shapes, uniformly drawn)
CHANCE = 1 / len(COLOURS)
DEFAULT_KINDS = ("colour",)


def _draw(shape: str, colour: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    # Sizes keep the areas of the four shapes apart (star < triangle < circle < square).
    r = int(size * rng.uniform(0.34, 0.38))
    jitter = int(size * 0.08)
    cx = size // 2 + rng.randint(-jitter, jitter)
    cy = size // 2 + rng.randint(-jitter, jitter)
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy - rad * math.sin(a)))
        d.polygon(pts, fill=colour)
    return img


def generate(n: int = 64, seed: int = 0, size: int = 448,
             kinds: tuple[str, ...] = DEFAULT_KINDS) -> list[tuple[str, bytes, dict]]:
    """``n`` samples as (image name, PNG bytes, annotation record); ``kinds`` are the
    question kinds to draw from (``colour``, ``shape``)."""
    unknown = [k for k in kinds if k not in QUESTIONS]
    if unknown or not kinds:
        raise ValueError(f"question kinds must be among {list(QUESTIONS)}, got {list(kinds)}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        deadline.check()  # the API's demo route: ~25 ms a sample
        shape = rng.choice(SHAPES)
        colour = rng.choice(list(COLOURS))
        kind = rng.choice(list(kinds))
        buf = io.BytesIO()
        _draw(shape, COLOURS[colour], size, rng).save(buf, format="PNG")
        name = f"images/{i:05d}.png"
        record = {
            "id": i,
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\n" + QUESTIONS[kind]},
                {"from": "gpt", "value": colour if kind == "colour" else shape},
            ],
        }
        out.append((name, buf.getvalue(), record))
    return out


def write_zip(path: Path, n: int = 64, seed: int = 0) -> Path:
    """Write the demo dataset as a zip (``images/*.png`` + ``annotations.jsonl``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = generate(n, seed)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data, _ in samples:
            zf.writestr(name, data)
        zf.writestr("annotations.jsonl", "".join(json.dumps(r) + "\n" for _, _, r in samples))
    return path


def write_folder(root: Path, n: int = 64, seed: int = 0) -> Path:
    """Write the demo dataset unpacked; returns the annotation path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    samples = generate(n, seed)
    for name, data, _ in samples:
        (root / name).write_bytes(data)
    ann = root / "annotations.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for _, _, r in samples))
    return ann
