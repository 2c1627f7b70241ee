"""What the model will see of one sample: its images and tiles, the conversation rendered
with the chosen template, the trained (label) spans and the token counts.

Pure and JSON-able, built from the same functions training uses (:func:`plan_tiles`,
:func:`render`, :func:`tokenize_sample`), so the preview cannot drift from the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend.core import deadline
from backend.core.checks import CheckConfig, ChunkResult, LineError, check_text, check_turns, image_list
from backend.core.data_index import file_lines
from backend.core.images import ImageProblem, check_image, resolve_image
from backend.core.samples import IGNORE_INDEX, IMAGE_PLACEHOLDER, normalise_conversations, tokenize_sample
from backend.core.templates import Template, render
from backend.core.tiling import TilePlan, max_patches_per_image, plan_tiles
from backend.core.validation import ValidationSettings


class PreviewError(ValueError):
    """The sample cannot be previewed (bad line number, not JSON...)."""


def index_lines(annotation: Path) -> np.ndarray:
    """Byte offset of the start of every line (8 bytes a line; cache it per dataset)."""
    parts = [np.zeros(1, dtype=np.int64)]
    pos = 0
    with open(annotation, "rb") as f:
        while block := f.read(1 << 22):
            parts.append(np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10).astype(np.int64) + pos + 1)
            pos += len(block)
    offsets = np.concatenate(parts)
    return offsets[offsets < pos] if pos else offsets[:0]


def read_record(annotation: Path, line: int, index: np.ndarray | None = None, *,
                cache_dir: Path | None = None) -> dict:
    """The JSON object on 1-based ``line``: one seek and a read of that line only, with the
    file's line offsets from ``index`` (:func:`index_lines`) or from the data index cache
    (``cache_dir``: scanned once per version of the file, then memory-mapped; None: scanned now)."""
    if index is not None:
        if not 1 <= line <= len(index):
            raise PreviewError(f"line {line} does not exist ({len(index)} lines)")
        with open(annotation, "rb") as f:
            f.seek(int(index[line - 1]))
            raw = f.readline()
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
    else:
        lines = file_lines(Path(annotation), cache_dir)
        if not 1 <= line <= len(lines.starts):
            raise PreviewError(f"line {line} does not exist ({len(lines.starts)} lines)")
        with open(annotation, "rb") as f:
            raw = lines.line_bytes(f, line)
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PreviewError(f"line {line} is not valid JSON ({e})") from None
    if not isinstance(rec, dict):
        raise PreviewError(f"line {line} is not a JSON object")
    return rec


def tile_images(path: Path, plan: TilePlan, image_size: int = 448) -> list[Image.Image]:
    """The tiles the model gets from one image, in order (thumbnail last), as RGB images."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    resized = img.resize((image_size * plan.cols, image_size * plan.rows), Image.Resampling.BICUBIC)
    tiles = [resized.crop(box) for box in plan.boxes(image_size)]
    if plan.thumbnail:
        tiles.append(img.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return tiles


def _image_entry(root_real: str, rel: str, budget: int, s: ValidationSettings) -> dict:
    deadline.check()
    entry: dict[str, Any] = {"path": rel, "max_tiles": budget}
    try:
        info = check_image(resolve_image(root_real, rel), rel, max_pixels=s.max_image_pixels)
    except ImageProblem as e:
        return {**entry, "error": e.message, "code": e.code}
    plan = plan_tiles(info.width, info.height, dynamic=s.dynamic_image_size, min_num=s.min_dynamic_patch,
                      max_num=budget, use_thumbnail=s.use_thumbnail, image_size=s.image_size)
    sx, sy = info.width / (plan.cols * s.image_size), info.height / (plan.rows * s.image_size)
    boxes = plan.boxes(s.image_size)
    return {**entry, "width": info.width, "height": info.height, "format": info.format,
            "grid": [plan.cols, plan.rows], "thumbnail": plan.thumbnail, "tiles": plan.num_tiles,
            "resized": [plan.cols * s.image_size, plan.rows * s.image_size], "boxes": [list(b) for b in boxes],
            "source_boxes": [[round(a * sx, 1), round(b * sy, 1), round(c * sx, 1), round(d * sy, 1)]
                             for a, b, c, d in boxes]}


def _segments(text: str, spans: list[tuple[int, int]]) -> list[dict]:
    """The rendered text cut at trained-span and ``<image>`` boundaries."""
    cuts = {0, len(text)}
    for a, b in spans:
        cuts |= {a, b}
    at = text.find(IMAGE_PLACEHOLDER)
    while at >= 0:
        cuts |= {at, at + len(IMAGE_PLACEHOLDER)}
        at = text.find(IMAGE_PLACEHOLDER, at + 1)
    out, image = [], 0
    edges = sorted(cuts)
    for a, b in zip(edges, edges[1:], strict=False):
        piece = text[a:b]
        if piece == IMAGE_PLACEHOLDER:
            out.append({"image": image, "text": piece, "trained": False})
            image += 1
        else:
            out.append({"text": piece, "trained": any(s <= a and b <= e for s, e in spans)})
    return out


def _token_view(ts: Any, text: str, limit: int | None) -> dict:
    """Runs of consecutive tokens with the same role in the loss: trained text, untrained
    text, or one image span; and the answer characters no trained token covers."""
    image_of = np.full(len(ts.input_ids), -1)
    for k, (a, b) in enumerate(ts.image_spans):
        image_of[a:b] = k
    runs: list[dict] = []
    span: list[int] = []
    for k, (lab, (a, b)) in enumerate(zip(ts.labels, ts.offsets, strict=True)):
        kind = ("image", int(image_of[k])) if image_of[k] >= 0 else ("text", lab != IGNORE_INDEX)
        if runs and runs[-1]["kind"] == kind:
            runs[-1]["tokens"] += 1
            span[1] = max(span[1], b)
            continue
        if runs:
            runs[-1]["end"] = span[1]
        runs.append({"kind": kind, "tokens": 1, "start_token": k})
        span = [a, b]
        runs[-1]["start"] = a
    if runs:
        runs[-1]["end"] = span[1]
    for r in runs:
        kind, a, b = r.pop("kind"), r.pop("start"), r.pop("end")
        if kind[0] == "image":
            r.update(image=kind[1], trained=False, text=f"<image {kind[1] + 1}: {r['tokens']} tokens>")
        else:
            r.update(image=None, trained=kind[1], text=text[a:b])
    covered = np.zeros(len(text) + 1, dtype=bool)
    for lab, (a, b) in zip(ts.labels, ts.offsets, strict=True):
        if lab != IGNORE_INDEX:
            covered[a:b] = True
    untrained = [[a, b] for a, b in ts.trained_spans if not all(covered[i] or text[i].isspace() for i in range(a, b))]
    total = ts.total_tokens
    cut_image = None
    if limit and total > limit:
        cut_image = next((k for k, (a, b) in enumerate(ts.image_spans) if a < limit < b), None)
    return {
        "counts": {"text": ts.text_tokens, "image": ts.image_tokens, "total": total, "trained": ts.trained_tokens,
                   "max_seq_length": limit, "over_limit": bool(limit and total > limit),
                   "truncation_cuts_image": None if cut_image is None else cut_image + 1},
        "runs": runs,
        "label_mismatch_spans": untrained,
    }


def preview_sample(record: dict, root: Path, *, settings: ValidationSettings, tokenizer: Any = None) -> dict:
    """The JSON-able preview of one annotation record (see the module docstring).

    ``settings.template`` must be set. Problems do not raise: they are listed in ``issues``
    and the preview shows whatever can still be computed.
    """
    template = settings.template
    if not isinstance(template, Template):
        raise PreviewError("choose a model or a template to preview a sample")
    cfg = CheckConfig(file="", root="", template=template, max_examples=1000)
    res = ChunkResult()
    out: dict[str, Any] = {"id": record.get("id"), "template": template.name, "images": [], "issues": []}
    try:
        check_turns(record.get("conversations"), template.supports_system)
        paths, empty = image_list(record)
        check_text(record["conversations"], len(paths), res, cfg, 0, None)
    except LineError as e:
        out["issues"].append({"severity": "error", "code": e.code, "message": e.message})
        out["conversations"] = record.get("conversations")
        return out
    out["issues"] += [{"severity": s, "code": c, "message": m} for s, c, _, _, m in res.examples]
    if empty:
        out["issues"].append({"severity": "warning", "code": "empty_image", "message": empty})
    budget = max_patches_per_image(settings.max_dynamic_patch, len(paths))
    root_real = os.path.realpath(root)
    out["images"] = [_image_entry(root_real, rel, budget, settings) for rel in paths]
    for im in out["images"]:
        if "error" in im:
            out["issues"].append({"severity": "error", "code": im["code"], "message": im["error"]})
    convs = normalise_conversations({**record, "image": paths})
    rendered = render(convs, template)
    out.update(conversations=convs, text=rendered.text, trained_spans=[list(s) for s in rendered.trained_spans],
               segments=_segments(rendered.text, rendered.trained_spans), tokens=None,
               settings={k: v for k, v in settings.to_dict().items() if k in (
                   "template", "max_dynamic_patch", "min_dynamic_patch", "use_thumbnail", "dynamic_image_size",
                   "image_size", "tokens_per_tile", "max_seq_length", "tiling_source")})
    if tokenizer is not None and all("error" not in im for im in out["images"]):
        deadline.check()
        ts = tokenize_sample({**record, "image": paths}, template, tokenizer, [im["tiles"] for im in out["images"]],
                             settings.tokens_per_tile, with_offsets=True)
        out["tokens"] = _token_view(ts, rendered.text, settings.max_seq_length)
        if out["tokens"]["label_mismatch_spans"]:
            out["issues"].append({"severity": "warning", "code": "label_mismatch", "message": "part of an "
                                  "answer is not covered by trained tokens (a token straddles the span edge)"})
    return out
