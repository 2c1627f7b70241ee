"""Small file helpers shared by import and export: JSON reading and writing, atomic output folders,
linking weights, and copying a checkpoint's side files."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from worker.convert.errors import ConversionError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; a missing, unreadable or non-object file is a ConversionError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path.name}: cannot read JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path.name}: expected a JSON object")
    return data


def read_optional_json(path: Path) -> dict:
    """Like :func:`read_json`, but ``{}`` when the file does not exist."""
    return read_json(path) if path.exists() else {}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextmanager
def atomic_folder(dst: Path) -> Iterator[Path]:
    """A temporary sibling of ``dst`` that becomes ``dst`` only if the block succeeds."""
    dst = Path(dst)
    if dst.exists():
        raise ConversionError(f"{dst}: already exists; choose a new destination")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def link_or_copy(path: Path, target: Path) -> None:
    """Hard-link (no extra disk for multi-GB weights) or, across file systems, copy."""
    try:
        os.link(path, target)
    except OSError:
        shutil.copy2(path, target)


def copy_side_files(src: Path, out: Path, *, skip: set[str], include_code: bool) -> list[str]:
    """Copy the non-weight files of a folder (tokenizer, generation config, ... and, when asked,
    remote-code ``.py`` files, which are copied as data and never run)."""
    copied = []
    for path in sorted(src.iterdir()):
        if not path.is_file() or path.name in skip or path.name in INDEX_FILES:
            continue
        if path.suffix in WEIGHT_SUFFIXES or (path.suffix == ".py" and not include_code):
            continue
        shutil.copy2(path, out / path.name)
        copied.append(path.name)
    return copied
