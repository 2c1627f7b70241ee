"""Turn what the user dropped into one zip the API accepts: a zip passes through; loose
images + one ``.jsonl`` are packed so that every image lands at the relative path the
annotation names (browsers drop files without their folders)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path


class BundleError(ValueError):
    """What was dropped cannot form a dataset; the message says what to do."""


def _referenced(annotation: Path) -> set[str]:
    refs: set[str] = set()
    with open(annotation, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # the API's validation reports it with its line number
            image = rec.get("image") if isinstance(rec, dict) else None
            for ref in image if isinstance(image, list) else [image]:
                if isinstance(ref, str):
                    refs.add(ref)
    return refs


def bundle(files: list[Path], workdir: Path) -> Path:
    """The zip to upload for ``files``."""
    zips = [f for f in files if f.suffix.lower() == ".zip"]
    if zips:
        if len(files) > 1:
            raise BundleError("drop either one .zip, or images together with one .jsonl file, not both")
        return zips[0]
    annotations = [f for f in files if f.suffix.lower() == ".jsonl"]
    if len(annotations) != 1:
        raise BundleError(f"drop exactly one .jsonl annotation with the images (got {len(annotations)})")
    ann = annotations[0]
    by_name = {f.name: f for f in files if f is not ann}
    out = workdir / f"{ann.stem}.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.write(ann, ann.name)
        placed: set[str] = set()
        for ref in sorted(_referenced(ann)):
            src = by_name.get(Path(ref).name)
            if src is not None:
                z.write(src, ref)
                placed.add(src.name)
        for name, src in by_name.items():  # unreferenced extras keep their name
            if name not in placed:
                z.write(src, name)
    return out
