"""What a user hands in, checked with the one validation engine: a zip (images + one or
more ``.jsonl``), a single ``.jsonl``, or a meta JSON in the seed's format.

Image paths resolve from the folder of their ``.jsonl`` (in a zip too) unless a root is
given; a meta file's entries carry their own ``root``; relative ones resolve by the one rule of
:func:`backend.core.meta.meta_base` (``base`` if given, else the meta file's folder).
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backend.core.archive import ArchiveError, extract_zip, find_annotations
from backend.core.meta import MetaError, check_allowed, load_meta, locate_entry, meta_base, resolve_entry
from backend.core.report import BundleReport, Issue
from backend.core.validation import ProgressFn, ValidationSettings, Validator


def rows_file(per_sample_dir: Path, key: str) -> Path:
    """Where the per-sample rows of the dataset ``key`` of a bundle are written."""
    return Path(per_sample_dir) / (key.replace("/", "__").replace("\\", "__") + ".samples.jsonl")


def _looks_like_meta(path: Path) -> bool:
    """A JSON object whose values are objects with an ``annotation`` (not a JSONL line)."""
    if path.suffix == ".json":
        return True
    if path.suffix == ".jsonl" or path.stat().st_size > 16 << 20:
        return False
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and "annotation" in v for v in data.values())


def validate_meta(meta_path: Path, validator: Validator, *, base: Path | None = None,
                  allowed_roots: Iterable[Path] | None = None, per_sample_dir: Path | None = None) -> BundleReport:
    """Check a meta file and every dataset it lists (``length`` against the real count too)."""
    bundle = BundleReport(source=str(meta_path))
    fname = Path(meta_path).name
    try:
        entries = load_meta(meta_path)
    except MetaError as e:
        for p in e.problems:
            bundle.issues.append(Issue("error", "meta", fname, 0, None, p))
        return bundle
    base = meta_base(meta_path, base)
    todo = []
    for name, entry in entries.items():
        root, ann = resolve_entry(entry, base)
        try:
            if allowed_roots is not None:
                root, ann = check_allowed(root, allowed_roots), check_allowed(ann, allowed_roots)
        except MetaError as e:
            bundle.issues.append(Issue("error", "meta_path", fname, 0, name, f"{name}: {e.problems[0]}"))
            continue
        try:
            locate_entry(name, entry, base)
        except MetaError as e:
            bundle.issues += [Issue("error", "meta_path", fname, 0, name, p) for p in e.problems]
            continue
        todo.append((name, entry, root, ann))
        validator.expect_bytes(ann.stat().st_size)
    for name, entry, root, ann in todo:
        out = rows_file(per_sample_dir, name) if per_sample_dir else None
        report = validator.validate(ann, root, name=ann.name, max_dynamic_patch=entry.max_dynamic_patch,
                                    per_sample_out=out)
        bundle.reports[name] = report
        counted = report.lines - report.counts[("warning", "blank_line")]
        if entry.length and entry.length != counted:
            bundle.issues.append(Issue("warning", "meta_length", fname, 0, name, f"{name}: 'length' says "
                                       f"{entry.length:,} but the annotation has {counted:,} sample lines"))
    return bundle


def validate_zip(zip_path: Path, validator: Validator, *, per_sample_dir: Path | None = None,
                 workdir: Path | None = None) -> BundleReport:
    """Extract to a temporary folder, check every ``.jsonl`` in it, remove the folder."""
    bundle = BundleReport(source=str(zip_path))
    fname = Path(zip_path).name
    with tempfile.TemporaryDirectory(dir=workdir, prefix="vlstudio-validate-") as tmp:
        dest = Path(tmp) / "x"
        try:
            extract_zip(zip_path, dest)
        except ArchiveError as e:
            bundle.issues.append(Issue("error", "archive", fname, 0, None, str(e)))
            return bundle
        annotations = find_annotations(dest)
        if not annotations:
            bundle.issues.append(Issue("error", "archive", fname, 0, None, "the archive holds no .jsonl file"))
        for ann in annotations:
            validator.expect_bytes(ann.stat().st_size)
        for ann in annotations:
            rel = ann.relative_to(dest).as_posix()
            out = rows_file(per_sample_dir, rel) if per_sample_dir else None
            bundle.reports[rel] = validator.validate(ann, ann.parent, name=rel, per_sample_out=out)
    return bundle


def validate_path(path: Path, root: Path | None = None, *, settings: ValidationSettings | None = None,
                  tokenizer: Any = None, workers: int | None = None, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, per_sample_dir: Path | None = None,
                  allowed_roots: Iterable[Path] | None = None) -> BundleReport:
    """Check a zip, a ``.jsonl`` or a meta JSON (``root``: images root of a ``.jsonl``, or the
    base folder of a meta file's relative paths)."""
    path = Path(path)
    if per_sample_dir is not None:
        per_sample_dir.mkdir(parents=True, exist_ok=True)
    with Validator(settings, tokenizer=tokenizer, workers=workers, progress=progress, cancel=cancel) as v:
        if not path.is_file():
            bundle = BundleReport(source=str(path))
            why = "is a directory; give a .zip, a .jsonl or a meta .json" if path.is_dir() else "not found"
            bundle.issues.append(Issue("error", "file", path.name, 0, None, f"{path} {why}"))
            return bundle
        if path.suffix.lower() == ".zip" or (path.suffix.lower() not in (".json", ".jsonl") and _is_zip(path)):
            return validate_zip(path, v, per_sample_dir=per_sample_dir)
        if _looks_like_meta(path):
            return validate_meta(path, v, base=root, allowed_roots=allowed_roots, per_sample_dir=per_sample_dir)
        bundle = BundleReport(source=str(path))
        out = rows_file(per_sample_dir, path.name) if per_sample_dir else None
        bundle.reports[path.name] = v.validate(path, root, per_sample_out=out)
        return bundle


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
