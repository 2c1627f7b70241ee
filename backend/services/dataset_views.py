"""Read side of a registered dataset: its report, a sample preview, its image files."""

from __future__ import annotations

import base64
import io
import json
import os
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core import deadline, source_lines
from backend.core.images import ImageProblem, resolve_image
from backend.core.preview import PreviewError, preview_sample, read_record, tile_images
from backend.core.tiling import plan_tiles
from backend.db.models import Dataset, Model, User
from backend.services import dataset_checks
from backend.services.datasets import STATS_DIR, get_dataset
from backend.services.errors import InvalidInput, NotFound
from backend.settings import get_settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
TILE_THUMB = 128  # pixels: tiles in a preview are for looking at, not for the model


def report(session: Session, dataset_id: int, user: User | None, per_sample_offset: int = 0,
           per_sample_limit: int = 0) -> dict[str, Any]:
    """The stored report, with ``per_sample`` rows [offset, offset + limit) when asked."""
    ds = get_dataset(session, dataset_id, user)
    out = {"dataset_id": ds.id, "status": ds.status, "progress": ds.progress, **(ds.report or {})}
    if per_sample_limit > 0:
        rows: list[dict] = []
        for f in _stats_files(ds):
            with open(f, encoding="utf-8") as fh:
                rows = [_row(x) for x in islice(fh, per_sample_offset, per_sample_offset + per_sample_limit)]
        out["per_sample"] = rows
    return out


def _row(line: str) -> dict:
    deadline.check()
    return json.loads(line)


def _stats_files(ds: Dataset) -> list[Path]:
    folder = _own_folder(ds)
    if folder is None or not (folder / STATS_DIR).is_dir():
        return []
    k = _index_in_bundle(ds)
    f = folder / STATS_DIR / f"per_sample-{k}.jsonl"
    return [f] if f.is_file() else []


def _own_folder(ds: Dataset) -> Path | None:
    for p in (Path(ds.annotation), *Path(ds.annotation).parents):
        if p.parent.name == "datasets" and p.name.isdigit():
            return p
    return None


def _index_in_bundle(ds: Dataset) -> int:
    # Several annotations of one upload share a folder; their rows are consecutive ids.
    folder = _own_folder(ds)
    return ds.id - int(folder.name) if folder is not None else 0


def _default_model(session: Session) -> int | None:
    return session.scalar(select(Model.id).where(Model.builtin.is_(True)).order_by(Model.id))


def sample(session: Session, dataset_id: int, line: int, user: User | None, model_id: int | None = None,
           max_dynamic_patch: int | None = None, max_seq_length: int | None = None,
           tiles: bool = False, preset: str | None = None) -> dict[str, Any]:
    """``preview_sample`` of line ``line`` (1-based) with the model's template and tokenizer;
    images get a ``url`` (``/api/datasets/{id}/files/...``) and, with ``tiles``, the tiles as
    small base64 JPEGs."""
    ds = get_dataset(session, dataset_id, user, ready=True)
    model_id = model_id if model_id is not None else _default_model(session)
    checks = dataset_checks.checks_for(session, model_id, user, max_dynamic_patch=max_dynamic_patch,
                                       max_seq_length=max_seq_length, preset=preset)
    if checks.settings.template is None:
        raise InvalidInput("choose a model (model_id) to preview a sample")
    annotation, k, part = locate(ds, line)
    try:
        record = read_record(annotation, k, cache_dir=get_settings().index_cache_path)  # one seek
        out = preview_sample(record, Path(ds.root), settings=checks.settings, tokenizer=checks.tokenizer)
    except PreviewError as e:
        raise InvalidInput(str(e).replace(f"line {k} ", f"line {line} ", 1)) from None
    out["line"], out["notes"] = line, checks.notes
    out["part"], out["annotation_line"] = part, k
    for img in out["images"]:
        img["url"] = f"/api/datasets/{ds.id}/files/{img['path']}"
        if tiles and "error" not in img:
            img["tile_images"] = _tile_thumbs(Path(ds.root), img, checks.settings)
    return out


def locate(ds: Dataset, line: int) -> tuple[Path, int, str]:
    """Line ``line`` of the uploaded file: (the annotation that holds it, its line there, ``train``
    or ``validation``). The dataset's files may be written from the upload (lines with errors
    dropped, a validation split): their sidecars map them back (backend/core/source_lines.py)."""
    train = Path(ds.annotation)
    k = source_lines.find(train, line)
    if k is not None:
        return train, k, "train"
    val = Path(ds.val_annotation) if ds.val_annotation else None
    if val is not None and source_lines.origins(val) is not None and (k := source_lines.find(val, line)):
        return val, k, "validation"
    if (ds.report or {}).get("dropped_lines"):
        raise InvalidInput(f"line {line} of the uploaded file is not in the dataset: it was dropped when the "
                           "dataset was registered (a line with errors, see the report, or a blank line)")
    raise InvalidInput(f"line {line} of the uploaded file holds no sample (a blank line, or past its end)")


def _tile_thumbs(root: Path, img: dict, s: Any) -> list[str]:
    path = resolve_image(os.path.realpath(root), img["path"])
    plan = plan_tiles(img["width"], img["height"], dynamic=s.dynamic_image_size, min_num=s.min_dynamic_patch,
                      max_num=img["max_tiles"], use_thumbnail=s.use_thumbnail, image_size=s.image_size)
    out = []
    for t in tile_images(Path(path), plan, s.image_size):
        deadline.check()
        t.thumbnail((TILE_THUMB, TILE_THUMB))
        buf = io.BytesIO()
        t.save(buf, format="JPEG", quality=80)
        out.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def image_file(session: Session, dataset_id: int, rel: str, user: User | None) -> Path:
    """A dataset image, only inside the dataset's root (no ``..``, no symlink out)."""
    ds = get_dataset(session, dataset_id, user, ready=True)
    try:
        real = Path(resolve_image(os.path.realpath(ds.root), rel))
    except ImageProblem as e:
        raise NotFound(f"{rel}: {e.message}") from None
    if real.suffix.lower() not in IMAGE_SUFFIXES:
        raise NotFound(f"{rel}: not an image file")
    if not real.is_file():
        raise NotFound(f"{rel}: no such file in dataset {dataset_id}")
    return real
