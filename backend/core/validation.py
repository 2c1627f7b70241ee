"""Dataset validation: one engine for the API, the UI and the CLI.

Every problem is reported with its file, line number, sample id and a one-line reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from backend.core.samples import SampleError, image_paths, normalise_conversations

Severity = Literal["error", "warning", "info"]


@dataclass
class Issue:
    severity: Severity
    code: str
    file: str
    line: int
    sample_id: str | None
    message: str


@dataclass
class Report:
    annotation: str
    samples: int = 0
    images: int = 0
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> dict[str, int]:
        return dict(Counter(f"{i.severity}:{i.code}" for i in self.issues))

    def to_dict(self) -> dict:
        return {"annotation": self.annotation, "samples": self.samples, "images": self.images,
                "ok": self.ok, "counts": self.counts(), "issues": [asdict(i) for i in self.issues]}


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of the non-empty lines; tolerates a BOM and CRLF."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield n, raw.decode("utf-8").rstrip("\r\n")


def resolve_inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing anything that escapes ``root`` (``..``, absolute, symlinks)."""
    root_r = root.resolve()
    p = (root / rel).resolve()
    if p != root_r and root_r not in p.parents:
        raise SampleError(f"image path {rel!r} escapes the dataset root")
    return p


def _check_record(rec: object) -> dict:
    if not isinstance(rec, dict):
        raise SampleError("line is not a JSON object")
    if "id" not in rec:
        raise SampleError("missing field 'id'")
    convs = rec.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise SampleError("field 'conversations' must be a non-empty list")
    for k, t in enumerate(convs):
        if not isinstance(t, dict) or not isinstance(t.get("value"), str) or t.get("from") not in (
                "human", "gpt", "system"):
            raise SampleError(f"conversations[{k}] must be {{from: human|gpt, value: string}}")
    img = rec.get("image")
    if img is not None and not (isinstance(img, str) or (
            isinstance(img, list) and all(isinstance(x, str) for x in img))):
        raise SampleError("field 'image' must be a string or a list of strings")
    return rec


def validate_annotation(annotation: Path, root: Path) -> Report:
    report = Report(annotation=annotation.name)
    seen_ids: set[str] = set()
    fname = annotation.name
    try:
        lines = list(iter_lines(annotation))
    except UnicodeDecodeError as e:
        report.issues.append(Issue("error", "encoding", fname, 0, None, f"not valid UTF-8: {e}"))
        return report
    for n, line in lines:
        if not line.strip():
            continue
        sid = None
        try:
            rec = _check_record(json.loads(line))
            sid = str(rec["id"])
            if sid in seen_ids:
                report.issues.append(Issue("error", "duplicate_id", fname, n, sid, f"duplicate id {sid!r}"))
            seen_ids.add(sid)
            normalise_conversations(rec)
            for rel in image_paths(rec):
                p = resolve_inside(root, rel)
                if not p.is_file():
                    raise SampleError(f"image {rel!r} not found")
                try:
                    with Image.open(p) as im:
                        im.verify()
                except Exception as e:  # PIL raises many types for bad files
                    raise SampleError(f"image {rel!r} cannot be decoded ({type(e).__name__})") from None
                report.images += 1
            report.samples += 1
        except json.JSONDecodeError as e:
            report.issues.append(Issue("error", "json", fname, n, sid, f"invalid JSON: {e.msg} at column {e.colno}"))
        except SampleError as e:
            report.issues.append(Issue("error", "sample", fname, n, sid, str(e)))
    if report.samples == 0 and not report.errors:
        report.issues.append(Issue("error", "empty", fname, 0, None, "no samples in the annotation file"))
    return report
