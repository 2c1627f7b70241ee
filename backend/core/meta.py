"""The meta file of the InternVL recipe: parse, check, build, merge, and ``repeat_time``.

Format (the seed's, key order kept)::

    {"<name>": {"root": "...", "annotation": "....jsonl", "data_augment": false,
                "repeat_time": 1, "length": 1234, "max_dynamic_patch": 6}}

``max_dynamic_patch`` is optional; unknown keys of an uploaded file are kept as they are.

``repeat_time`` semantics:

- ``r == 1``: every line once;
- ``r > 1``: must be a whole number; the list of lines is repeated ``r`` times;
- ``0 < r < 1``: the first ``int(N * r)`` lines are kept, as the reference does (N counts the
  non-blank lines). The dataset counts (:func:`effective_length`) and the trainer
  (:func:`subsample_indices`) both follow this one rule, so they name the same lines. A sorted
  annotation file gives a biased head: shuffle the file itself if a random part is wanted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

SEED_KEYS = ("root", "annotation", "data_augment", "repeat_time", "length")


class MetaError(ValueError):
    """A meta file that cannot be used; ``problems`` lists every problem at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class MetaEntry:
    root: str
    annotation: str
    data_augment: bool = False
    repeat_time: float = 1
    length: int = 0
    max_dynamic_patch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_length(self) -> int:
        return effective_length(self.length, self.repeat_time)

    def to_json(self) -> dict[str, Any]:
        """The entry in the seed's format (integral ``repeat_time`` written as an integer)."""
        rt = self.repeat_time
        out: dict[str, Any] = {"root": self.root, "annotation": self.annotation, "data_augment": self.data_augment,
                               "repeat_time": int(rt) if float(rt).is_integer() else rt, "length": self.length}
        if self.max_dynamic_patch is not None:
            out["max_dynamic_patch"] = self.max_dynamic_patch
        out.update(self.extra)
        return out


def repeat_time_problem(rt: Any) -> str | None:
    if isinstance(rt, bool) or not isinstance(rt, int | float) or not math.isfinite(rt):
        return f"repeat_time must be a number, got {rt!r}"
    if rt <= 0:
        return f"repeat_time must be positive, got {rt}"
    if rt > 1 and not float(rt).is_integer():
        return f"repeat_time {rt} > 1 must be a whole number (lines are repeated, not sampled)"
    return None


def effective_length(length: int, repeat_time: float) -> int:
    """How many samples a dataset of ``length`` lines contributes to an epoch."""
    if repeat_time < 1:
        return int(length * repeat_time)
    return length * int(repeat_time)


def subsample_indices(n: int, repeat_time: float) -> np.ndarray:
    """The line indices (0-based, of the non-blank lines) a dataset of ``n`` lines contributes,
    in order of use: the head for fractional values, every line ``repeat_time`` times for whole ones."""
    problem = repeat_time_problem(repeat_time)
    if problem:
        raise ValueError(problem)
    if repeat_time >= 1:
        return np.tile(np.arange(n, dtype=np.int64), int(repeat_time))
    return np.arange(effective_length(n, repeat_time), dtype=np.int64)


def _entry(name: str, raw: Any, problems: list[str]) -> MetaEntry | None:
    if not isinstance(raw, dict):
        problems.append(f"{name}: must be an object with root, annotation, data_augment, repeat_time, length")
        return None
    before = len(problems)
    for key in ("root", "annotation"):
        if not isinstance(raw.get(key), str) or (key == "annotation" and not raw.get(key)):
            problems.append(f"{name}: '{key}' must be a {'non-empty ' if key == 'annotation' else ''}string")
    if isinstance(raw.get("annotation"), str) and raw["annotation"] and not raw["annotation"].endswith(".jsonl"):
        problems.append(f"{name}: 'annotation' must be a .jsonl file, got {raw['annotation']!r}")
    if not isinstance(raw.get("data_augment", False), bool):
        problems.append(f"{name}: 'data_augment' must be true or false")
    rt = raw.get("repeat_time", 1)
    if (problem := repeat_time_problem(rt)) is not None:
        problems.append(f"{name}: {problem}")
    length = raw.get("length", 0)
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        problems.append(f"{name}: 'length' must be a non-negative integer")
    mdp = raw.get("max_dynamic_patch")
    if mdp is not None and (isinstance(mdp, bool) or not isinstance(mdp, int) or mdp < 1):
        problems.append(f"{name}: 'max_dynamic_patch' must be a positive integer")
    if len(problems) > before:
        return None
    known = (*SEED_KEYS, "max_dynamic_patch")
    return MetaEntry(root=raw["root"], annotation=raw["annotation"], data_augment=raw.get("data_augment", False),
                     repeat_time=int(rt) if float(rt).is_integer() else rt, length=length,
                     max_dynamic_patch=mdp, extra={k: v for k, v in raw.items() if k not in known})


def parse_meta(data: Any) -> dict[str, MetaEntry]:
    """Entries of a meta file given as text, bytes or the decoded object; every problem of
    every entry is reported at once in :class:`MetaError`."""
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MetaError([f"not valid JSON: {e}"]) from None
    if not isinstance(data, dict) or not data:
        raise MetaError(["a meta file is a non-empty JSON object {name: {root, annotation, ...}}"])
    problems: list[str] = []
    out: dict[str, MetaEntry] = {}
    for name, raw in data.items():
        if not name.strip():
            problems.append("a dataset name must not be empty")
            continue
        entry = _entry(name, raw, problems)
        if entry is not None:
            out[name] = entry
    if problems:
        raise MetaError(problems)
    return out


def load_meta(path: Path) -> dict[str, MetaEntry]:
    try:
        return parse_meta(Path(path).read_bytes())
    except FileNotFoundError:
        raise MetaError([f"{path}: not found"]) from None


def build_meta(entries: Mapping[str, MetaEntry] | Iterable[tuple[str, MetaEntry]]) -> dict[str, dict]:
    """The meta JSON object (seed's format) of named entries, in the given order."""
    items = entries.items() if isinstance(entries, Mapping) else entries
    out: dict[str, dict] = {}
    for name, entry in items:
        if name in out:
            raise MetaError([f"dataset name {name!r} is used twice"])
        problem = repeat_time_problem(entry.repeat_time)
        if problem:
            raise MetaError([f"{name}: {problem}"])
        out[name] = entry.to_json()
    return out


def merge_meta(*metas: Mapping[str, MetaEntry], on_conflict: Literal["error", "rename", "replace"] = "error",
               ) -> dict[str, MetaEntry]:
    """Merge meta files in order (e.g. the user's datasets, then a released mixture).

    A name used twice is an error, or gets a ``_2``, ``_3``... suffix (``rename``), or the
    later entry wins (``replace``). The same annotation listed twice is always an error:
    it would silently double a dataset's weight (use ``repeat_time`` for that).
    """
    out: dict[str, MetaEntry] = {}
    problems: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for meta in metas:
        for name, entry in meta.items():
            key = (entry.root, entry.annotation)
            if key in seen and not (on_conflict == "replace" and seen[key] == name):
                problems.append(f"{name}: annotation {entry.annotation!r} is already listed as {seen[key]!r}")
                continue
            target = name
            if name in out and on_conflict == "error":
                problems.append(f"dataset name {name!r} is used twice")
                continue
            if name in out and on_conflict == "rename":
                k = 2
                while f"{name}_{k}" in out:
                    k += 1
                target = f"{name}_{k}"
            out[target] = entry
            seen[key] = target
    if problems:
        raise MetaError(problems)
    return out


def dumps_meta(meta: Mapping[str, MetaEntry]) -> str:
    """The meta file's text: 2-space indented JSON, non-ASCII kept, trailing newline."""
    return json.dumps(build_meta(meta), indent=2, ensure_ascii=False) + "\n"


def summarize(meta: Mapping[str, MetaEntry]) -> dict[str, Any]:
    """Per-dataset and total sample counts, with ``repeat_time`` applied."""
    rows = [{"name": name, "length": e.length, "repeat_time": e.repeat_time, "effective": e.effective_length}
            for name, e in meta.items()]
    return {"datasets": rows, "length": sum(r["length"] for r in rows),
            "effective": sum(r["effective"] for r in rows)}


def meta_base(meta_path: Path, base: Path | None = None) -> Path:
    """THE folder relative ``root`` and ``annotation`` paths of a meta file resolve from, in the
    validator, at registration and in the trainer: ``base`` when given (``--root``, ``meta_base``;
    the reference scripts' working directory ``internvl_chat/`` for the released files), else the
    folder of the meta file itself. Never the current folder: a server's is meaningless, and a
    file that validates from one folder would fail to train from another."""
    return Path(base).absolute() if base is not None else Path(meta_path).absolute().parent


def resolve_entry(entry: MetaEntry, base: Path) -> tuple[Path, Path]:
    """(root, annotation) with relative paths taken from ``base`` (see :func:`meta_base`);
    absolute ones are kept as they are."""
    return Path(base) / entry.root, Path(base) / entry.annotation


def locate_entry(name: str, entry: MetaEntry, base: Path) -> tuple[Path, Path]:
    """:func:`resolve_entry`, checked: :class:`MetaError` naming the entry and the path when the
    annotation or the root does not exist."""
    root, ann = resolve_entry(entry, base)
    problems = []
    if not ann.is_file():
        problems.append(f"{name}: annotation {ann} not found" + _from(entry.annotation, base))
    if not root.is_dir():
        problems.append(f"{name}: root {root} is not a folder" + _from(entry.root, base))
    if problems:
        raise MetaError(problems)
    return root, ann


def _from(path: str, base: Path) -> str:
    return "" if Path(path).is_absolute() else f" (relative paths resolve from {base})"


def count_lines(annotation: Path) -> int:
    """Sample lines of an annotation (blank lines are skipped, as the validator and trainer do)."""
    with open(annotation, "rb") as f:
        return sum(1 for line in f if line.strip())


def check_allowed(path: Path, allowed_roots: Iterable[Path]) -> Path:
    """``path`` resolved, if it lies under one of ``allowed_roots`` (``VLSTUDIO_DATA_ROOTS``);
    else :class:`MetaError`. Symbolic links are resolved before the comparison."""
    if "\x00" in str(path):
        raise MetaError([f"{str(path)!r} contains a NUL character"])
    real = Path(path).resolve()
    roots = [Path(r).resolve() for r in allowed_roots]
    for r in roots:
        if real == r or r in real.parents:
            return real
    where = ", ".join(str(r) for r in roots) or "none configured"
    raise MetaError([f"{path} is not under an allowed data folder ({where})"])


def meta_names(path: Path, max_bytes: int = 16 << 20) -> list[str] | None:
    """The dataset names if ``path`` holds a meta file (a JSON object of objects with an
    ``annotation``, whatever the file is called), else None. Files over ``max_bytes`` are not read."""
    try:
        if Path(path).stat().st_size > max_bytes:
            return None
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "annotation" in v for v in data.values()):
        return list(data)
    return None


def meta_hint(name: str, names: list[str]) -> str:
    """What to say when a meta file is handed in as a dataset."""
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"{name} is a meta file (a mixture of {len(names)} dataset(s): {listed}), not a dataset annotation: "
            "train on it as a mixture (POST /api/jobs with mixture.meta_path, or the meta file field of the Train "
            "page), or register its annotations one by one; `vlstudio datasets validate` checks a meta file")
