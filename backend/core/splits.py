"""Held-out validation splits of an annotation file (by fraction, seeded), pure stdlib.

The split files live beside the annotation so the image paths, relative to the dataset
root, stay valid: ``train_split.jsonl`` (what training reads) and ``val_split.jsonl``
(eval loss during training, evaluation jobs). The original annotation is kept untouched.
"""

from __future__ import annotations

import random
from pathlib import Path

from backend.core import source_lines

TRAIN_NAME = "train_split.jsonl"
VAL_NAME = "val_split.jsonl"


class SplitError(ValueError):
    """The split cannot be made; the message says why."""


def split_indices(n: int, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, validation) line indices, both in file order; at least one line in each."""
    if not 0 < fraction < 1:
        raise SplitError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction}")
    n_val = round(n * fraction)
    if n_val < 1 or n_val >= n:
        raise SplitError(f"a validation fraction of {fraction} of {n} samples leaves "
                         f"{n_val} for validation and {n - n_val} for training; both need at least one")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val = sorted(order[:n_val])
    held = set(val)
    return [i for i in range(n) if i not in held], val


def write_fraction_split(annotation: Path, fraction: float, seed: int = 0) -> tuple[Path, Path, int, int]:
    """Write ``train_split.jsonl`` and ``val_split.jsonl`` beside ``annotation``; returns
    (train path, validation path, train count, validation count)."""
    with open(annotation, encoding="utf-8-sig") as f:
        numbered = [(k, line if line.endswith("\n") else line + "\n") for k, line in enumerate(f, 1) if line.strip()]
    lines = [line for _, line in numbered]
    train, val = split_indices(len(lines), fraction, seed)
    train_path, val_path = annotation.parent / TRAIN_NAME, annotation.parent / VAL_NAME
    if annotation.name in (TRAIN_NAME, VAL_NAME):
        raise SplitError(f"the annotation may not be called {annotation.name} when splitting it")
    train_path.write_text("".join(lines[i] for i in train), encoding="utf-8")
    val_path.write_text("".join(lines[i] for i in val), encoding="utf-8")
    upload_line = source_lines.to_upload(annotation)
    for path, part in ((train_path, train), (val_path, val)):  # the uploaded file's line of each
        source_lines.write(path, [upload_line(numbered[i][0]) for i in part])
    return train_path, val_path, len(train), len(val)
